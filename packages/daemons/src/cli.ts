#!/usr/bin/env node
/**
 * cli: `node packages/daemons/dist/cli.js <command>`, the one script that provides the real daemons.
 *   install                     install every missing tool (root on Debian/Ubuntu), else say what to install
 *   check                       list which tools are present
 *   run [--only a,b] [--state DIR] -- CMD...
 *                               start the daemons, run CMD with MOAT_TEST_* set, stop them,
 *                               exit with CMD's code
 *   up [--only a,b] [--state DIR]   start them in the background, record them in <state>/daemons.json
 *   down [--state DIR]          stop exactly the daemons `up` recorded
 *   status [--state DIR]        show them; `env` prints only the export lines (eval "$(... env)")
 * Exports nothing; see suite.ts for the daemons and the variables.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ClamdHandle } from './clamd.js';
import { isAlive, isRoot, stopPid, untraversable, type DaemonHandle } from './process.js';
import type { RbldnsdHandle } from './rbldnsd.js';
import { DAEMON_TOOLS, DAEMONS, type DaemonName, ENV, startSuite } from './suite.js';
import { ALL_TOOLS, checkTools, ensureInstalled, type Tool } from './tools.js';

const USAGE = `usage: node packages/daemons/dist/cli.js <command>
  install                                   install the missing tools (as root on Debian/Ubuntu: one apt-get install)
  check                                     show which tools are present
  run [--only LIST] [--state DIR] -- CMD..  start the daemons, run CMD with MOAT_TEST_* set, stop them, exit with CMD's code
  up [--only LIST] [--state DIR]            start the daemons in the background (prints export lines on stdout)
  down [--state DIR]                        stop the daemons that \`up\` started
  status [--state DIR]                      show them and their variables
  env [--state DIR]                         print only the export lines: eval "$(node packages/daemons/dist/cli.js env)"
LIST: comma-separated from ${DAEMONS.join(',')} (default: all). DIR: default $${ENV.state}, else
<repo>/.state/daemons/<pid> for run and <repo>/.state/daemons/dev for up/down/status/env (as root
with the clone in a folder others cannot enter: ${os.tmpdir()}/moat-daemons-<pid|dev>).
run skips a daemon whose variable (${ENV.clamd}, ${ENV.spamd}, ${ENV.redis}, ${ENV.rbldnsd}) is already set.`;

const REPO = fileURLToPath(new URL('../../../', import.meta.url));

/**
 * <repo>/.state/daemons/<leaf>; as root, when the clone sits in a folder other users cannot enter
 * (say /root), the temp folder instead: the daemons drop privileges and must read their state.
 */
function defaultState(leaf: string): string {
  const inRepo = path.join(REPO, '.state', 'daemons', leaf);
  if (!isRoot() || !untraversable(REPO)) return inRepo;
  return path.join(os.tmpdir(), `moat-daemons-${leaf}`);
}
const CLIENT_TOOLS = ALL_TOOLS.filter((t) => !Object.values(DAEMON_TOOLS).includes(t));

class UsageError extends Error {}

interface Args {
  command: string;
  only?: DaemonName[];
  state?: string;
  rest: string[];
}

function parseArgs(argv: string[]): Args {
  const [command = 'help', ...tail] = argv;
  const args: Args = { command, rest: [] };
  for (let i = 0; i < tail.length; i++) {
    const a = tail[i]!;
    if (a === '--') {
      args.rest = tail.slice(i + 1);
      break;
    }
    const [flag, inline] =
      a.startsWith('--') && a.includes('=')
        ? [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)]
        : [a, undefined];
    const value = () => {
      const v = inline ?? tail[++i];
      if (v === undefined) throw new UsageError(`${flag} needs a value`);
      return v;
    };
    if (flag === '--only') {
      const names = value()
        .split(',')
        .map((s) => s.trim())
        .filter(Boolean);
      const bad = names.filter((n) => !(DAEMONS as readonly string[]).includes(n));
      if (bad.length > 0)
        throw new UsageError(`unknown daemon ${bad.join(', ')} (known: ${DAEMONS.join(', ')})`);
      args.only = names as DaemonName[];
    } else if (flag === '--state') args.state = path.resolve(value());
    else if (a.startsWith('-')) throw new UsageError(`unknown option ${a}`);
    else {
      args.rest = tail.slice(i);
      break;
    }
  }
  return args;
}

function say(line: string): void {
  process.stderr.write(`[daemons] ${line}\n`);
}

function describe(h: DaemonHandle): string {
  const extra =
    h.name === 'clamd'
      ? `  socket ${(h as ClamdHandle).socket}`
      : h.name === 'rbldnsd'
        ? `  zones in ${(h as RbldnsdHandle).dir}`
        : '';
  return `${h.name.padEnd(8)} ${h.address.padEnd(24)} pid ${String(h.pid).padEnd(7)} ready in ${h.readyMs} ms${extra}`;
}

const shq = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
const exportLines = (env: Record<string, string>) =>
  Object.entries(env)
    .map(([k, v]) => `export ${k}=${shq(v)}\n`)
    .join('');

function toolsFor(daemons: readonly DaemonName[], withClients: boolean): Tool[] {
  return [...daemons.map((d) => DAEMON_TOOLS[d]), ...(withClients ? CLIENT_TOOLS : [])];
}

async function run(args: Args): Promise<number> {
  if (args.rest.length === 0) throw new UsageError('run needs a command after --');
  const given = args.state ?? process.env[ENV.state];
  const stateDir = given ?? defaultState(String(process.pid));
  const wanted = DAEMONS.filter((d) => !args.only || args.only.includes(d));
  const toStart = wanted.filter((d) => !process.env[ENV[d]]);
  // Without --only the command is the whole test suite: it needs spamc, swaks, smtp-source, ... too.
  ensureInstalled(toolsFor(toStart, !args.only));

  let signalled: NodeJS.Signals | undefined;
  let child: ReturnType<typeof spawn> | undefined;
  const onSignal = (sig: NodeJS.Signals) => {
    if (child && child.exitCode === null && child.signalCode === null) {
      child.kill(sig); // forward; we clean up when it exits
      return;
    }
    // A second one during startup: exit now; the exit hook sends the daemons SIGTERM.
    if (signalled) process.exit(128 + (os.constants.signals[sig] ?? 15));
    signalled = sig;
    say(`${sig} during startup: stopping the daemons`);
  };
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(sig, onSignal);

  const t0 = Date.now();
  const suite = await startSuite({
    stateDir,
    only: args.only,
    reuse: true,
    onReady: (h) => say(describe(h)),
  });
  for (const d of suite.reused) say(`${d.padEnd(8)} ${process.env[ENV[d]]} (reused from ${ENV[d]})`);
  let code = 1;
  try {
    if (signalled) return 128 + (os.constants.signals[signalled] ?? 15);
    say(
      `${suite.handles.length} daemon(s) up in ${Date.now() - t0} ms, state in ${stateDir}; running: ${args.rest.join(' ')}`,
    );
    const env = { ...process.env, ...suite.env };
    code = await new Promise<number>((resolve) => {
      child = spawn(args.rest[0]!, args.rest.slice(1), { stdio: 'inherit', env });
      child.once('error', (err) => {
        say(`cannot run ${args.rest[0]}: ${err.message}`);
        resolve(127);
      });
      child.once('exit', (c, sig) => resolve(sig ? 128 + (os.constants.signals[sig] ?? 15) : (c ?? 1)));
    });
    return code;
  } finally {
    const t1 = Date.now();
    await suite.stop();
    say(
      `stopped ${suite.handles.map((h) => `${h.name} (pid ${h.pid})`).join(', ') || 'nothing'} in ${Date.now() - t1} ms`,
    );
    if (!given && code === 0) {
      fs.rmSync(stateDir, { recursive: true, force: true });
      for (const dir of [path.dirname(stateDir), path.dirname(path.dirname(stateDir))]) {
        if (!dir.startsWith(REPO)) break;
        try {
          fs.rmdirSync(dir); // .state/daemons and .state, only when empty
        } catch {
          break;
        }
      }
    } else if (!given) say(`logs kept in ${stateDir}`);
  }
}

interface Recorded {
  name: string;
  tool: string;
  pid: number;
  address: string;
  logFile: string;
}
interface StateFile {
  stateDir: string;
  startedAt: string;
  daemons: Recorded[];
  env: Record<string, string>;
}

const devState = (args: Args) =>
  args.state ?? process.env[ENV.state] ?? path.join(REPO, '.state', 'daemons', 'dev');
const stateFile = (dir: string) => path.join(dir, 'daemons.json');

function readState(dir: string): StateFile | undefined {
  try {
    return JSON.parse(fs.readFileSync(stateFile(dir), 'utf8')) as StateFile;
  } catch {
    return undefined;
  }
}

/** Alive and still the program we started (guards against a reused pid). */
function ours(d: Recorded): boolean {
  if (!isAlive(d.pid)) return false;
  try {
    return fs.readFileSync(`/proc/${d.pid}/cmdline`, 'utf8').includes(d.tool);
  } catch {
    return true; // no /proc: trust the pid
  }
}

async function up(args: Args): Promise<number> {
  const stateDir = devState(args);
  const old = readState(stateDir);
  if (old?.daemons.some(ours)) {
    say(`already up (state ${stateDir}); \`down\` first. Running:`);
    for (const d of old.daemons.filter(ours)) say(`${d.name.padEnd(8)} ${d.address} pid ${d.pid}`);
    return 1;
  }
  const only = args.only ?? [...DAEMONS];
  ensureInstalled(toolsFor(only, !args.only));
  const t0 = Date.now();
  const suite = await startSuite({ stateDir, only, detached: true, onReady: (h) => say(describe(h)) });
  const state: StateFile = {
    stateDir,
    startedAt: new Date().toISOString(),
    daemons: suite.handles.map((h) => ({
      name: h.name,
      tool: DAEMON_TOOLS[h.name as DaemonName],
      pid: h.pid,
      address: h.address,
      logFile: h.logFile,
    })),
    env: suite.env,
  };
  fs.writeFileSync(stateFile(stateDir), `${JSON.stringify(state, null, 2)}\n`);
  say(`up in ${Date.now() - t0} ms; recorded in ${stateFile(stateDir)}; \`down\` stops them`);
  process.stdout.write(exportLines(suite.env));
  return 0;
}

async function down(args: Args): Promise<number> {
  const stateDir = devState(args);
  const state = readState(stateDir);
  if (!state) {
    say(`nothing recorded in ${stateFile(stateDir)}`);
    return 0;
  }
  await Promise.all(
    state.daemons.map(async (d) => {
      if (!ours(d)) return say(`${d.name.padEnd(8)} pid ${d.pid} already gone`);
      await stopPid(d.pid);
      say(`${d.name.padEnd(8)} pid ${d.pid} stopped`);
    }),
  );
  fs.rmSync(stateFile(stateDir), { force: true });
  return 0;
}

function status(args: Args, envOnly: boolean): number {
  const stateDir = devState(args);
  const state = readState(stateDir);
  if (!state) {
    if (!envOnly)
      process.stdout.write(`nothing recorded in ${stateFile(stateDir)} (\`up\` starts the daemons)\n`);
    return envOnly ? 1 : 0;
  }
  if (envOnly) {
    process.stdout.write(exportLines(state.env));
    return state.daemons.every(ours) ? 0 : 1;
  }
  process.stdout.write(`state ${stateDir}, started ${state.startedAt}\n`);
  for (const d of state.daemons) {
    process.stdout.write(
      `${d.name.padEnd(8)} ${d.address.padEnd(24)} pid ${String(d.pid).padEnd(7)} ${ours(d) ? 'running' : 'GONE'}  log ${d.logFile}\n`,
    );
  }
  process.stdout.write(exportLines(state.env));
  return 0;
}

function check(): number {
  const res = checkTools();
  for (const t of ALL_TOOLS) process.stdout.write(`${t.padEnd(13)} ${res.found[t] ?? 'MISSING'}\n`);
  if (res.missing.length > 0) process.stdout.write(`missing Debian packages: ${res.packages.join(' ')}\n`);
  return res.missing.length > 0 ? 1 : 0;
}

async function main(argv: string[]): Promise<number> {
  const args = parseArgs(argv);
  switch (args.command) {
    case 'install':
      ensureInstalled(ALL_TOOLS, { log: say });
      say('every tool is present');
      return 0;
    case 'check':
      return check();
    case 'run':
      return run(args);
    case 'up':
      return up(args);
    case 'down':
      return down(args);
    case 'status':
      return status(args, false);
    case 'env':
      return status(args, true);
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(`${USAGE}\n`);
      return 0;
    default:
      throw new UsageError(`unknown command ${args.command}`);
  }
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    if (err instanceof UsageError) {
      process.stderr.write(`${err.message}\n${USAGE}\n`);
      process.exit(2);
    }
    say(err instanceof Error ? err.message : String(err));
    process.exit(1);
  },
);
