/**
 * moat (npm start): the whole chain on one machine. Validates the configuration once (a mistake stops
 * here with every bad key named), then runs the five services under the supervisor until Ctrl-C,
 * SIGTERM or SIGHUP (the terminal closed). Services start from the back of the chain, each once the one
 * before it listens, so each next hop is up before its client.
 *
 * Managed daemons: filter.clamd / filter.spamd default to `managed`, so `npm start` on a fresh machine
 * scans for real: the launcher starts clamd and spamd itself (@moat/daemons, state under
 * dataDir/daemons, loopback, EICAR-only signatures until freshclam's databases are added), hands the
 * filter their addresses (MOAT_FILTER_CLAMD / MOAT_FILTER_SPAMD in the children's environment),
 * restarts one that dies on the same address (managed.ts), and stops them after the services.
 * Containers and real installations set addresses instead.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ConfigError, loadConfig, printConfig } from '@moat/config';
import { type DaemonHandle, ensureInstalled, startClamd, startSpamd } from '@moat/daemons';
import { forgetDaemons, lockDataDir, recordDaemons, stopLeftovers } from './leftovers.js';
import { KeptDaemon } from './managed.js';
import { CONFIG_ERROR_EXIT, Supervisor } from './supervisor.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const SERVICES = ['delivery', 'quarantine', 'filter', 'greylist', 'screen'];

let loaded;
try {
  loaded = loadConfig();
} catch (err) {
  if (err instanceof ConfigError) {
    process.stderr.write(`moat: ${err.message}\n`);
    process.exit(78);
  }
  throw err;
}
if (process.argv.includes('--print-config')) {
  process.stdout.write(printConfig(loaded.config));
  process.exit(0);
}
const c = loaded.config;
process.stdout.write(
  `moat: ${loaded.fileExists ? loaded.file : 'built-in defaults (no moat.yaml)'}; ` +
    `mail for ${c.domains.join(', ')} on ${c.screen.listen} -> Maildir ${c.delivery.maildir}\n`,
);

/** clamd or spamd is not installed (and could not be). */
class NotInstalled extends Error {}

interface Managed {
  handles: KeptDaemon[];
  env: Record<string, string>;
}

/**
 * Starts the daemons filter.clamd / filter.spamd name as `managed`, each kept running (restarted on
 * its address when it dies); returns them and their variables.
 */
async function managedDaemons(): Promise<Managed> {
  const wanted = { clamd: c.filter.clamd === 'managed', spamd: c.filter.spamd === 'managed' };
  if (!wanted.clamd && !wanted.spamd) return { handles: [], env: {} };
  // a fresh machine: as root on Debian the missing packages are installed (one apt-get install),
  // anywhere else this throws with the exact packages to install
  try {
    ensureInstalled([
      ...(wanted.clamd ? (['clamd'] as const) : []),
      ...(wanted.spamd ? (['spamd'] as const) : []),
    ]);
  } catch (err) {
    throw new NotInstalled((err as Error).message);
  }
  const start = async (stateDir: string) => {
    const [clamd, spamd] = await Promise.allSettled([
      wanted.clamd ? startClamd({ stateDir }) : undefined,
      wanted.spamd ? startSpamd({ stateDir }) : undefined,
    ]);
    const handles: DaemonHandle[] = [];
    for (const r of [clamd, spamd]) if (r.status === 'fulfilled' && r.value) handles.push(r.value);
    // one failed: the other one, started, is stopped, not left behind
    for (const r of [clamd, spamd]) {
      if (r.status === 'rejected') {
        await Promise.all(handles.map((h) => h.stop()));
        throw r.reason;
      }
    }
    const env: Record<string, string> = {};
    for (const h of handles) env[h.name === 'clamd' ? 'MOAT_FILTER_CLAMD' : 'MOAT_FILTER_SPAMD'] = h.address;
    const kept = handles.map(
      (h) =>
        new KeptDaemon(h, {
          restart: () => (h.name === 'clamd' ? startClamd : startSpamd)({ stateDir, port: h.port }),
          say: (line) => process.stdout.write(`moat: ${line}\n`),
          // the next launcher after a kill -9 must find the daemon that runs now
          onRestart: () => recordDaemons(records, kept),
        }),
    );
    return { handles: kept, env };
  };
  try {
    return await start(path.join(c.dataDir, 'daemons'));
  } catch (err) {
    // as root the daemons drop privileges and need a folder they can reach; one per launcher, so a
    // second launcher (or daemons a killed one left behind) never shares clamd's locked log file
    if (!/not traversable/.test((err as Error).message)) throw err;
    tmpState = path.join(os.tmpdir(), `moat-daemons-${process.getuid?.() ?? 0}-${process.pid}`);
    return start(tmpState);
  }
}

/** The temporary state folder of the managed daemons, removed once they are stopped. */
let tmpState: string | undefined;

/** Where this launcher records its managed daemons for the next one (see leftovers.ts). */
const records = path.join(c.dataDir, 'daemons');

// one launcher per dataDir: a second one would rewrite the first one's daemon configs, then fail on
// clamd's locked log file (or, elsewhere, restart five services forever on ports in use)
const other = lockDataDir(records);
if (other !== undefined) {
  process.stderr.write(
    `moat: another launcher (pid ${other}) is running on ${c.dataDir}; stop it first (kill ${other})\n`,
  );
  process.exit(1);
}

// Signals first: a stop while the managed daemons start stops them once they are up (a second
// signal exits at once, and the daemons' exit hook sends their groups SIGTERM). SIGHUP is the
// terminal closed or the SSH session dropped: the same clean stop, not death by the signal, which
// runs no exit hook and would leave every service and daemon running (they are in their own groups).
let stopping = false;
let supervisor: Supervisor | undefined;
let starting: Promise<Managed> | undefined;
const stop = (signal: string) => {
  if (stopping) {
    // the second Ctrl-C: everything now, open sessions or not
    supervisor?.kill();
    process.exit(1);
  }
  stopping = true;
  process.stdout.write(`moat: ${signal}: stopping the services\n`);
  void (async () => {
    const daemons = await starting?.catch(() => undefined);
    // one that dies while the services stop is not started again
    for (const h of daemons?.handles ?? []) h.retire();
    await supervisor?.stop();
    await Promise.all((daemons?.handles ?? []).map((h) => h.stop()));
    forgetDaemons(records);
    if (tmpState) fs.rmSync(tmpState, { recursive: true, force: true });
    process.exit(0);
  })();
};
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(signal, () => stop(signal));
// after a SIGHUP the terminal is gone: lines that cannot be written are dropped, the stop goes on
for (const stream of [process.stdout, process.stderr]) stream.on('error', () => {});

let daemons: Managed;
try {
  // a launcher killed with -9 left its clamd and spamd running: stop them before starting ours
  await stopLeftovers(records, (line) => process.stdout.write(`moat: ${line}\n`));
  daemons = await (starting = managedDaemons());
} catch (err) {
  // the install hint only when they are missing: installed daemons that failed say why in their logs
  process.stderr.write(
    `moat: filter.clamd/filter.spamd are "managed" but the daemons could not be started:\n${(err as Error).message}\n` +
      (err instanceof NotInstalled
        ? `moat: install them (clamav-daemon, spamassassin, spamd) or set filter.clamd / filter.spamd to addresses\n`
        : ''),
  );
  process.exit(1);
}
for (const h of daemons.handles)
  process.stdout.write(`moat: managed ${h.name} on ${h.address} (pid ${h.pid})\n`);
if (daemons.handles.length > 0) recordDaemons(records, daemons.handles);

if (!stopping) {
  // children resolve relative paths against the repository root, as this process does; a MOAT_CONFIG
  // must name a file that is there, so on built-in defaults they get none (and find no ./moat.yaml either)
  const env: NodeJS.ProcessEnv = { ...process.env, MOAT_DATA_DIR: c.dataDir, ...daemons.env };
  if (loaded.fileExists) env.MOAT_CONFIG = loaded.file;
  else delete env.MOAT_CONFIG;
  // screen only carries its spliced sessions to greylist: greylist's stop ends them
  supervisor = new Supervisor({
    root,
    services: SERVICES,
    env,
    passThrough: ['screen'],
    // not one service left to run: say so and fail, instead of idling (or exiting 0) with nothing up
    onAllFailed: () => {
      process.stderr.write(
        'moat: every service stopped on a configuration error; fix moat.yaml and start again\n',
      );
      void Promise.all(daemons.handles.map((h) => h.stop())).then(() => {
        forgetDaemons(records);
        process.exit(CONFIG_ERROR_EXIT);
      });
    },
  });
  void supervisor.start();
}
