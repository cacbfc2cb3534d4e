/**
 * bench/amavis: amavisd-new (Debian's /usr/sbin/amavisd, 2.13) as the baseline for bench/filter, on the
 * same clamd and spamd, in the same run. A private config under a tmp dir (own $MYHOME, $TEMPBASE, pid
 * and lock files, log file, no syslog, no BerkeleyDB, no ZMQ), listening on 127.0.0.1:<free port> and
 * forwarding to the caller's smtp-sink, every destiny D_PASS (throughput, not verdicts), no bypass.
 *
 * ClamAV: amavis' clamd-stream entry (`clamd:` scheme: zINSTREAM in a zIDSESSION), so clamd needs no
 * access to amavis' temp files. SpamAssassin: amavis' SpamdClient, which has no host option (it always
 * dials 127.0.0.1:783), so a byte-for-byte TCP relay on 127.0.0.1:783 passes its connections to the
 * suite's spamd; when 783 cannot be bound (not root, or taken), embedded SpamAssassin in amavis with
 * the test spamd's local.cf, and the result says so. Exports startAmavis, amavisUnavailable,
 * amavisBin and amavisScored.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { spamdLocalCf } from '@moat/daemons';
import { freePort, SmtpClient, tmpDir, waitFor, which } from '@moat/testkit';

const SPAMD_CLIENT_PORT = 783; // hard-wired in Amavis::SpamControl::SpamdClient
const SA_SITE_SOURCE = '/etc/spamassassin';

export interface AmavisOptions {
  /** clamd's unix socket (preferred) or host:port. */
  clamd: string;
  /** host:port of spamd. */
  spamd: string;
  /** The next hop: 127.0.0.1:sinkPort. */
  sinkPort: number;
  /** $max_servers: pre-forked children. */
  servers: number;
}

export interface Amavis {
  port: number;
  /** How SpamAssassin runs: 'spamd' (SpamdClient to the suite's spamd) or 'embedded'. */
  spam: 'spamd' | 'embedded';
  /** One line: how it is configured. */
  describe: string;
  /** The log file (log level 0: one line per message). */
  logFile: string;
  stop(): Promise<void>;
}

/** /usr/sbin/amavisd (Debian 12) or amavisd-new (older); undefined when not installed. */
export function amavisBin(): string | undefined {
  return which('amavisd') ?? which('amavisd-new');
}

/** Why amavisd-new cannot be measured here (the line to print), or undefined when it can. */
export function amavisUnavailable(): string | undefined {
  if (!amavisBin()) return 'amavisd-new not installed: no comparison';
  // it refuses a config file that is not owned by root (or is owned by its own non-root EUID)
  if (process.getuid?.() !== 0) return 'amavisd-new needs root here (config owned by root): no comparison';
  return undefined;
}

/** A Perl single-quoted string. */
function q(s: string): string {
  return `'${s.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`;
}

/** A TCP relay on 127.0.0.1:listenPort to host:port; undefined when the port cannot be bound. */
async function relay(listenPort: number, target: string): Promise<net.Server | undefined> {
  const [host, port] = target.split(':');
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(port), host);
    sockets.add(client).add(upstream);
    client.setNoDelay(true);
    upstream.setNoDelay(true);
    const done = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('error', done).on('close', done);
    upstream.on('error', done).on('close', done);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  server.on('close', () => sockets.forEach((s) => s.destroy()));
  return new Promise((resolve) => {
    server.once('error', () => resolve(undefined));
    server.listen(listenPort, '127.0.0.1', () => resolve(server));
  });
}

/** A private SpamAssassin site config: the plugin *.pre files plus the test spamd's local.cf. */
function saSiteDir(dir: string): string {
  const site = path.join(dir, 'sa-site');
  fs.mkdirSync(site, { mode: 0o755 });
  let pre: string[] = [];
  try {
    pre = fs.readdirSync(SA_SITE_SOURCE).filter((f) => f.endsWith('.pre'));
  } catch {
    // no plugins: the core rules only
  }
  for (const f of pre) fs.copyFileSync(path.join(SA_SITE_SOURCE, f), path.join(site, f));
  fs.writeFileSync(path.join(site, 'local.cf'), spamdLocalCf());
  return site;
}

function config(p: {
  home: string;
  port: number;
  sinkPort: number;
  servers: number;
  clamd: string;
  embeddedSiteDir?: string;
  asRoot: boolean;
}): string {
  const clamd = p.clamd.startsWith('/') ? p.clamd : p.clamd.replace(/^([^:[\]]+):(\d+)$/, '[$1]:$2');
  const spam = p.embeddedSiteDir
    ? [
        `@spam_scanners = (['SpamAssassin', 'Amavis::SpamControl::SpamAssassin']);`,
        `$sa_siteconfigpath = ${q(p.embeddedSiteDir)};`,
        `$sa_local_tests_only = 1;`,
      ]
    : [`@spam_scanners = (['SpamdClient', 'Amavis::SpamControl::SpamdClient']);`];
  return [
    '# written by @moat/e2e bench/amavis',
    'use strict;',
    `$MYHOME = ${q(p.home)};`,
    `$TEMPBASE = "$MYHOME/tmp";`,
    `$db_home = "$MYHOME/db";`,
    `$helpers_home = $MYHOME;`,
    `$QUARANTINEDIR = "$MYHOME/quarantine";`,
    // plain files: the default *.gz names need Amavis::IO::Zlib, which this build does not load
    `$virus_quarantine_method = 'local:virus-%m';`,
    `$spam_quarantine_method = 'local:spam-%m';`,
    `$banned_files_quarantine_method = 'local:banned-%m';`,
    `$bad_header_quarantine_method = 'local:badh-%m';`,
    `$pid_file = "$MYHOME/amavisd.pid";`,
    `$lock_file = "$MYHOME/amavisd.lock";`,
    ...(p.asRoot ? [`$daemon_user = 'amavis';`, `$daemon_group = 'amavis';`] : []),
    `$mydomain = 'example.test';`,
    `$myhostname = 'amavis.bench.test';`,
    `$inet_socket_bind = '127.0.0.1';`,
    `$inet_socket_port = ${p.port};`,
    `@inet_acl = qw(127.0.0.1);`,
    `$unix_socketname = undef;`,
    `$forward_method = 'smtp:[127.0.0.1]:${p.sinkPort}';`,
    `$notify_method = $forward_method;`,
    `$max_servers = ${p.servers};`,
    `$enable_db = 0;`,
    `$enable_zmq = 0;`,
    `$enable_dkim_verification = 0;`,
    `$do_syslog = 0;`,
    `$LOGFILE = "$MYHOME/amavisd.log";`,
    `$log_level = 0;`,
    `@local_domains_maps = (1);`,
    `@bypass_virus_checks_maps = (0);`,
    `@bypass_spam_checks_maps = (0);`,
    `@bypass_banned_checks_maps = (0);`,
    `@bypass_header_checks_maps = (0);`,
    `$final_virus_destiny = D_PASS;`,
    `$final_banned_destiny = D_PASS;`,
    `$final_spam_destiny = D_PASS;`,
    `$final_bad_header_destiny = D_PASS;`,
    `$sa_tag_level_deflt = -999;`,
    `$sa_tag2_level_deflt = 6.2;`,
    `$sa_kill_level_deflt = 6.9;`,
    `@av_scanners = (['ClamAV-clamd-stream', \\&ask_daemon, ['{}/*', ${q(`clamd:${clamd}`)}],`,
    `  qr/\\bOK$/m, qr/\\bFOUND$/m, qr/^.*?: (?!Infected Archive)(.*) FOUND$/m]);`,
    `@av_scanners_backup = ();`,
    ...spam,
    '1;',
    '',
  ].join('\n');
}

/** The process group's members (the parent and its pre-forked children). */
function groupPids(pgid: number): number[] {
  const r = spawnSync('pgrep', ['-g', String(pgid)], { encoding: 'utf8' });
  return r.stdout
    .split('\n')
    .filter(Boolean)
    .map(Number)
    .filter((pid) => pid !== process.pid);
}

/** Waits for a 220 banner on the port (amavis binds before its children can answer). */
async function wait220(port: number, timeoutMs: number, child: ChildProcess, logFile: string): Promise<void> {
  await waitFor(
    async () => {
      if (child.exitCode !== null || child.signalCode !== null) {
        const log = fs.existsSync(logFile) ? fs.readFileSync(logFile, 'utf8').slice(-2000) : '';
        throw new Error(`amavisd exited (${child.exitCode ?? child.signalCode}):\n${log}`);
      }
      try {
        const c = await SmtpClient.connect(port);
        try {
          const r = await c.read(2000);
          return r.code === 220 ? true : undefined;
        } finally {
          await c.quit();
        }
      } catch {
        return undefined;
      }
    },
    timeoutMs,
    `amavisd's 220 on port ${port}`,
  );
}

/** Starts amavisd in the foreground; undefined when it is not installed. */
export async function startAmavis(opts: AmavisOptions): Promise<Amavis | undefined> {
  const bin = amavisBin();
  if (!bin) return undefined;
  const asRoot = process.getuid?.() === 0;
  // amavis refuses a config file not owned by root, or in a folder its user can write: the config
  // goes in the tmp dir itself (root, 0755), everything it writes under home/ (its user's)
  const dir = tmpDir('moat-amavis-');
  fs.chmodSync(dir, 0o755);
  const home = path.join(dir, 'home');
  for (const d of ['', 'tmp', 'db', 'quarantine']) fs.mkdirSync(path.join(home, d), { recursive: true });
  const spamdRelay = await relay(SPAMD_CLIENT_PORT, opts.spamd);
  const embeddedSiteDir = spamdRelay ? undefined : saSiteDir(dir);
  if (asRoot) spawnSync('chown', ['-R', 'amavis:amavis', home]);
  const port = await freePort();
  const conf = path.join(dir, 'amavisd.conf');
  fs.writeFileSync(
    conf,
    config({
      home,
      port,
      sinkPort: opts.sinkPort,
      servers: opts.servers,
      clamd: opts.clamd,
      embeddedSiteDir,
      asRoot,
    }),
    { mode: 0o644 },
  );
  const logFile = path.join(home, 'amavisd.log');
  const child = spawn(bin, ['-c', conf, 'foreground'], {
    stdio: ['ignore', 'ignore', fs.openSync(path.join(dir, 'amavisd.out'), 'a')],
    detached: true, // own process group: the parent and its children stop together
  });
  const pgid = child.pid!;
  const stop = async (): Promise<void> => {
    const signal = (sig: NodeJS.Signals) => {
      try {
        process.kill(-pgid, sig);
      } catch {
        // already gone
      }
    };
    signal('SIGTERM');
    try {
      await waitFor(() => groupPids(pgid).length === 0 || undefined, 10_000, 'amavisd to stop');
    } catch {
      signal('SIGKILL');
      await waitFor(() => groupPids(pgid).length === 0 || undefined, 5000, 'amavisd to die');
    }
    await new Promise<void>((resolve) => (spamdRelay ? spamdRelay.close(() => resolve()) : resolve()));
    fs.rmSync(dir, { recursive: true, force: true });
  };
  try {
    await wait220(port, embeddedSiteDir ? 120_000 : 30_000, child, logFile);
  } catch (e) {
    await stop();
    throw e;
  }
  const clamd = opts.clamd.startsWith('/') ? `clamd unix socket ${opts.clamd}` : `clamd ${opts.clamd}`;
  const describe =
    `amavisd-new (${bin}, ${opts.servers} children): ${clamd} (clamd-stream: zINSTREAM), ` +
    (spamdRelay
      ? `spamd ${opts.spamd} via SpamdClient (relayed from 127.0.0.1:${SPAMD_CLIENT_PORT}, its fixed address)`
      : `EMBEDDED SpamAssassin (127.0.0.1:${SPAMD_CLIENT_PORT} for SpamdClient unavailable), the test spamd's local.cf`) +
    `, every destiny D_PASS, next hop smtp-sink`;
  return { port, spam: spamdRelay ? 'spamd' : 'embedded', describe, logFile, stop };
}

/**
 * Messages to recipients m<i>.<tag>@example.test that amavis passed with a numeric SpamAssassin score
 * ("Hits: 1.2" in its main log line; "Hits: -" when the spam scan failed or was skipped).
 */
export function amavisScored(logFile: string, tag: string): number {
  let text = '';
  try {
    text = fs.readFileSync(logFile, 'utf8');
  } catch {
    return 0;
  }
  // two lines per message (the main one and a per-recipient one): count recipients once
  const rcpt = new RegExp(`-> <(m\\d+\\.${tag}@example\\.test)>.*\\bHits: -?\\d`);
  const scored = new Set<string>();
  for (const line of text.split('\n')) {
    const m = rcpt.exec(line);
    if (m) scored.add(m[1]!);
  }
  return scored.size;
}
