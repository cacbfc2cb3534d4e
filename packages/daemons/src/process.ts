/**
 * process: the plumbing every daemon shares. Exports DaemonHandle and CommonOptions, freePort
 * (listen on port 0 and close), spawnDaemon (starts one daemon in its own process group with its
 * output in a log file, waits until a probe answers, and reports its exit), onPort (a free port, retried when the daemon
 * loses the race for it), stopPid (SIGTERM that pid, SIGKILL its group after a grace period, wait
 * until it is gone), isAlive, isRoot, passwd, sharedDir/writeShared/untraversable (state the
 * daemons' unprivileged users can read), and the small probes: tcpExchange, dnsResolver, dnsAnswers.
 */
import { spawn } from 'node:child_process';
import dgram from 'node:dgram';
import dns from 'node:dns';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

/** What every start* function returns. */
export interface DaemonHandle {
  /** clamd, spamd, redis or rbldnsd. */
  readonly name: string;
  /** host:port, or redis://host:port for Redis. */
  readonly address: string;
  readonly port: number;
  readonly pid: number;
  /** Where the daemon's own output goes. */
  readonly logFile: string;
  /** Milliseconds from spawn until the probe answered. */
  readonly readyMs: number;
  /** Settles when the process exits, whatever ended it (stop() included): what a watcher waits on. */
  readonly exited: Promise<DaemonExit>;
  /** Kills exactly this pid (SIGTERM, SIGKILL to its process group after a few seconds) and waits. */
  stop(): Promise<void>;
}

/** How a daemon's process ended: its exit code, or the signal that killed it. */
export interface DaemonExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** Options every start* function takes. */
export interface CommonOptions {
  /** Folder for configs, sockets and logs; created if missing. */
  stateDir: string;
  /** Default: a free port. */
  port?: number;
  /** How long to wait for the first answer. Default 30 s. */
  timeoutMs?: number;
  /** Let the daemon outlive this process (for `up`): no exit hook, child unreferenced. */
  detached?: boolean;
}

export const HOST = '127.0.0.1';
export const SBIN_DIRS = ['/usr/local/sbin', '/usr/sbin', '/sbin'];

export function isRoot(): boolean {
  return process.getuid?.() === 0;
}

/** uid and gid of a local user from /etc/passwd; undefined when there is no such user. */
export function passwd(user: string): { uid: number; gid: number } | undefined {
  try {
    for (const line of fs.readFileSync('/etc/passwd', 'utf8').split('\n')) {
      const f = line.split(':');
      if (f[0] === user && f[2] && f[3]) return { uid: Number(f[2]), gid: Number(f[3]) };
    }
  } catch {
    // no /etc/passwd
  }
  return undefined;
}

/** Binds port (0: the kernel picks one) on HOST and releases it; resolves the port, or undefined if taken. */
function tryBind(kind: 'tcp' | 'udp', port: number): Promise<number | undefined> {
  return new Promise((resolve) => {
    if (kind === 'udp') {
      const sock = dgram.createSocket('udp4');
      sock.once('error', () => resolve(undefined));
      sock.bind(port, HOST, () => {
        const bound = sock.address().port;
        sock.close(() => resolve(bound));
      });
      return;
    }
    const srv = net.createServer();
    srv.once('error', () => resolve(undefined));
    srv.listen(port, HOST, () => {
      const bound = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(bound));
    });
  });
}

/** The kernel's first ephemeral port (net.ipv4.ip_local_port_range), 32768 by default. */
function ephemeralLow(): number {
  try {
    const low = Number(
      fs.readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0],
    );
    return Number.isInteger(low) && low > 1024 ? low : 32768;
  } catch {
    return 32768;
  }
}

/** Ports this process handed out: never twice. */
const handedOut = new Set<number>();

/**
 * A free port on 127.0.0.1 for a daemon or a service to listen on, picked at random below the
 * kernel's ephemeral range. A port from that range (what binding port 0 returns) can be taken as the
 * source port of any outgoing connection between this check and the listener's own bind, and the
 * test suite makes tens of thousands of connections: a service whose port was taken so never comes
 * up. Falls back to the kernel's choice when nothing below the range is free.
 */
export async function freePort(kind: 'tcp' | 'udp' = 'tcp'): Promise<number> {
  const high = ephemeralLow();
  const low = Math.max(1025, high - 16384);
  const span = high - low;
  for (let attempt = 0; attempt < 100 && span > 0; attempt++) {
    const port = low + Math.floor(Math.random() * span);
    if (handedOut.has(port)) continue;
    if ((await tryBind(kind, port)) === port) {
      handedOut.add(port);
      return port;
    }
  }
  const port = await tryBind(kind, 0);
  if (port === undefined) throw new Error(`no free ${kind} port on ${HOST}`);
  return port;
}

/** The first folder from dir up to / that other users cannot traverse (no o+x), if any. */
export function untraversable(dir: string): string | undefined {
  for (let cur = path.resolve(dir); ; cur = path.dirname(cur)) {
    try {
      if ((fs.statSync(cur).mode & 0o001) === 0) return cur;
    } catch {
      // not created yet: its parents decide
    }
    if (cur === path.dirname(cur)) return undefined;
  }
}

/**
 * When root, the daemons drop privileges (spamd to debian-spamd, rbldnsd to rbldns), so the folders
 * they read must be world-readable and every parent traversable: mkdtemp makes 0700 folders, and a
 * umask of 077 makes 0600 files. Creates dir and, when root, makes it 0755.
 */
export function sharedDir(dir: string): string {
  fs.mkdirSync(dir, { recursive: true });
  if (!isRoot()) return dir;
  fs.chmodSync(dir, 0o755);
  const blocked = untraversable(path.dirname(dir));
  if (blocked) {
    const mode = (fs.statSync(blocked).mode & 0o777).toString(8);
    throw new Error(
      `${blocked} is not traversable by other users (mode ${mode}); as root the daemons drop privileges, ` +
        `so put the state folder (${dir}) under a world-traversable path such as ${os.tmpdir()}`,
    );
  }
  return dir;
}

/** Writes a file readable by the daemons' unprivileged users whatever the umask. */
export function writeShared(file: string, text: string): void {
  fs.writeFileSync(file, text);
  fs.chmodSync(file, 0o644);
}

/** True while the pid exists and is not a zombie. */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  } catch {
    return true; // no /proc: trust kill(0)
  }
}

/**
 * True while any process of the group is alive. Zombies do not count: a daemon's children that
 * exited after it did are reaped by PID 1, which in a container may take its time.
 */
function groupAlive(pgid: number): boolean {
  try {
    for (const entry of fs.readdirSync('/proc')) {
      if (!/^\d+$/.test(entry)) continue;
      let stat: string;
      try {
        stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
      } catch {
        continue; // gone meanwhile
      }
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(fields[2]) === pgid && fields[0] !== 'Z' && fields[0] !== 'X') return true;
    }
    return false;
  } catch {
    // no /proc: ask the kernel (zombies count there)
  }
  try {
    process.kill(-pgid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // already gone
  }
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

async function waitGone(check: () => boolean, ms: number): Promise<boolean> {
  const until = Date.now() + ms;
  while (check()) {
    if (Date.now() >= until) return false;
    await sleep(20);
  }
  return true;
}

/**
 * Stops exactly one daemon: SIGTERM to pid, waits up to graceMs, then SIGKILL to its process group
 * (pid is the group leader: spawnDaemon starts each daemon in its own group). Afterwards, any of
 * its own children still left in that group (spamd's preforked children) get SIGKILL too, and are
 * waited for: they may hold the daemon's listening socket. A leader already gone (killed on its
 * own) has only its group cleared: the kernel does not reuse a pid while a group still has it as its id.
 */
export async function stopPid(pid: number, graceMs = 5000): Promise<void> {
  if (isAlive(pid)) {
    signal(pid, 'SIGTERM');
    if (!(await waitGone(() => isAlive(pid), graceMs))) {
      signal(-pid, 'SIGKILL');
      signal(pid, 'SIGKILL');
      await waitGone(() => isAlive(pid), 2000);
    }
  }
  if (!(await waitGone(() => groupAlive(pid), 1000))) {
    signal(-pid, 'SIGKILL');
    await waitGone(() => groupAlive(pid), 2000);
  }
}

/** Owned (not detached) daemons get a SIGTERM to their group if this process exits without stopping them. */
const owned = new Set<number>();
let exitHook = false;
function own(pid: number): void {
  owned.add(pid);
  if (exitHook) return;
  exitHook = true;
  process.on('exit', () => {
    for (const p of owned) signal(-p, 'SIGTERM');
  });
}

/** The daemon exited before it answered. */
export class DaemonExitedError extends Error {
  override readonly name = 'DaemonExitedError';
}

export function logTail(file: string, lines = 15): string {
  try {
    const text = fs.readFileSync(file, 'utf8').trimEnd();
    return text.split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

export interface SpawnSpec {
  name: string;
  command: string;
  args: string[];
  /** stdout and stderr go here (appended). */
  logFile: string;
  /** Resolves true once the daemon answers its protocol; called every 50 ms or so. */
  probe: () => Promise<boolean>;
  timeoutMs?: number;
  detached?: boolean;
  /** More files to show when it fails (the daemon's own log). */
  extraLogs?: string[];
}

/**
 * Spawns a daemon in its own process group and waits until its probe answers; `exited` settles when
 * it exits, then or later.
 */
export async function spawnDaemon(
  spec: SpawnSpec,
): Promise<{ pid: number; readyMs: number; exited: Promise<DaemonExit> }> {
  const started = Date.now();
  const out = fs.openSync(spec.logFile, 'a');
  let exit: string | undefined;
  const child = spawn(spec.command, spec.args, { detached: true, stdio: ['ignore', out, out] });
  fs.closeSync(out);
  const spawned = await new Promise<number>((resolve, reject) => {
    child.once('spawn', () => resolve(child.pid!));
    child.once('error', reject);
  });
  const exited = new Promise<DaemonExit>((resolve) =>
    child.on('exit', (code, sig) => {
      exit = sig ? `killed by ${sig}` : `exited with code ${code}`;
      owned.delete(spawned);
      resolve({ code, signal: sig });
    }),
  );
  if (spec.detached) child.unref();
  else own(spawned);

  const describe = () =>
    [spec.logFile, ...(spec.extraLogs ?? [])].map((f) => `--- ${f}\n${logTail(f)}`).join('\n');
  const deadline = started + (spec.timeoutMs ?? 30_000);
  for (;;) {
    if (exit) {
      throw new DaemonExitedError(
        `${spec.name} ${exit} before answering: ${spec.command} ${spec.args.join(' ')}\n${describe()}`,
      );
    }
    if (await spec.probe().catch(() => false)) return { pid: spawned, readyMs: Date.now() - started, exited };
    if (Date.now() > deadline) {
      await stopPid(spawned, 2000);
      throw new Error(`${spec.name} did not answer within ${spec.timeoutMs ?? 30_000} ms\n${describe()}`);
    }
    await sleep(40);
  }
}

/**
 * Runs start(port) on the given port, or on a free port, retrying twice with a new free port when
 * the daemon exits early (another process may have taken the port in between).
 */
export async function onPort<T>(
  given: number | undefined,
  kind: 'tcp' | 'udp',
  start: (port: number) => Promise<T>,
): Promise<T> {
  if (given !== undefined) return start(given);
  for (let attempt = 1; ; attempt++) {
    const port = await freePort(kind);
    try {
      return await start(port);
    } catch (err) {
      if (!(err instanceof DaemonExitedError) || attempt >= 3) throw err;
    }
  }
}

/** Connects, writes payload, collects the reply until done(reply) or the peer closes; rejects on timeout. */
export function tcpExchange(
  port: number,
  payload: string | Buffer,
  done: (reply: string) => boolean = () => false,
  timeoutMs = 1000,
  host = HOST,
): Promise<string> {
  return new Promise((resolve, reject) => {
    let reply = '';
    const sock = net.connect({ host, port });
    const finish = (err?: Error) => {
      clearTimeout(timer);
      sock.destroy();
      if (err) reject(err);
      else resolve(reply);
    };
    const timer = setTimeout(
      () => finish(new Error(`no reply from ${host}:${port} in ${timeoutMs} ms`)),
      timeoutMs,
    );
    sock.on('connect', () => sock.write(payload));
    sock.on('data', (d) => {
      reply += d.toString('latin1');
      if (done(reply)) finish();
    });
    sock.on('end', () => finish());
    sock.on('error', (err) => finish(err));
  });
}

/** A resolver that asks only server (host:port), with retries: UDP to a busy rbldnsd can lose packets. */
export function dnsResolver(
  server: string,
  opts: { timeout?: number; tries?: number } = {},
): dns.promises.Resolver {
  const r = new dns.promises.Resolver({ timeout: opts.timeout ?? 500, tries: opts.tries ?? 3 });
  r.setServers([server]);
  return r;
}

const NOT_ANSWERED = new Set([dns.CONNREFUSED, dns.TIMEOUT, dns.CANCELLED, 'ECONNREFUSED', 'ETIMEDOUT']);

/** True when the DNS server answered a query at all: NXDOMAIN, REFUSED and no data all count. */
export async function dnsAnswers(server: string, name: string): Promise<boolean> {
  try {
    await dnsResolver(server, { timeout: 300, tries: 1 }).resolve4(name);
    return true;
  } catch (err) {
    return !NOT_ANSWERED.has((err as NodeJS.ErrnoException).code ?? '');
  }
}
