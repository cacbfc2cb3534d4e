/**
 * rbldnsd: a real DNSBL/DNSWL server on loopback (UDP only) serving zone files from one folder,
 * re-read within a second of a change (-c 1s), so a test can list an address while it runs.
 * Exports startRbldnsd, rbldnsdArgs, zoneSpec, formatZone, writeZone and appendZone (which also
 * make sure rbldnsd sees every edit, even two within the same second), and ZONE_TYPES.
 *
 * ip4set lines look like `127.0.0.2 :2:listed $`: A 127.0.0.2, TXT `listed <ip>` for 2.0.0.127.<zone>.
 */
import fs from 'node:fs';
import path from 'node:path';
import {
  type CommonOptions,
  type DaemonHandle,
  dnsAnswers,
  HOST,
  isRoot,
  onPort,
  passwd,
  sharedDir,
  spawnDaemon,
  stopPid,
} from './process.js';
import { requireTool } from './tools.js';

export const ZONE_TYPES = [
  'ip4set',
  'ip4tset',
  'ip4trie',
  'ip6tset',
  'ip6trie',
  'dnset',
  'combined',
  'generic',
  'acl',
] as const;
export type ZoneType = (typeof ZONE_TYPES)[number];

export interface Zone {
  /** The zone's domain, e.g. zen.test. */
  name: string;
  type: ZoneType;
  /** File name inside the zone folder, e.g. zen4.zone. */
  file: string;
}

export interface RbldnsdOptions extends CommonOptions {
  zones: readonly Zone[];
  /** Folder with the zone files; default <stateDir>/rbldnsd. Missing zone files are created empty. */
  dir?: string;
  /** TTL of answers in seconds; default 60. */
  ttl?: number;
}

export interface RbldnsdHandle extends DaemonHandle {
  /** The folder holding the zone files: edit them with writeZone/appendZone. */
  readonly dir: string;
  readonly zones: readonly Zone[];
}

function checkFile(file: string): void {
  if (!file || file.includes('/') || file.includes(':') || file.startsWith('.')) {
    throw new Error(`zone file name must be a plain file name without / or : (got ${JSON.stringify(file)})`);
  }
}

export function zoneSpec(z: Zone): string {
  if (!/^[a-z0-9.-]+$/i.test(z.name)) throw new Error(`bad zone name ${JSON.stringify(z.name)}`);
  if (!ZONE_TYPES.includes(z.type)) throw new Error(`unknown rbldnsd zone type ${JSON.stringify(z.type)}`);
  checkFile(z.file);
  return `${z.name}:${z.type}:${z.file}`;
}

export function rbldnsdArgs(p: {
  port: number;
  dir: string;
  zones: readonly Zone[];
  ttl?: number;
  /** -u: as root rbldnsd switches to user rbldns by default. */
  user?: string;
}): string[] {
  if (p.zones.length === 0) throw new Error('rbldnsd needs at least one zone');
  return [
    '-n',
    ...(p.user ? ['-u', p.user] : []),
    '-c',
    '1s',
    '-t',
    String(p.ttl ?? 60),
    '-w',
    p.dir,
    '-b',
    `${HOST}/${p.port}`,
    ...p.zones.map(zoneSpec),
  ];
}

/** Zone file text: one entry a line, newline-terminated. */
export function formatZone(lines: string | readonly string[]): string {
  const list = typeof lines === 'string' ? lines.split('\n') : lines;
  const text = list.map((l) => l.replace(/\r?\n$/, '')).join('\n');
  return text === '' || text.endsWith('\n') ? text : `${text}\n`;
}

/**
 * rbldnsd notices a change by the file's mtime in whole seconds: when the new mtime would equal the
 * old one, move it a second ahead so a quick second edit is not missed.
 */
function edit(file: string, write: () => void): void {
  let before: number | undefined;
  try {
    before = Math.floor(fs.statSync(file).mtimeMs / 1000);
  } catch {
    // new file
  }
  write();
  fs.chmodSync(file, 0o644);
  const after = Math.floor(fs.statSync(file).mtimeMs / 1000);
  if (before !== undefined && after <= before) fs.utimesSync(file, new Date(), new Date((before + 1) * 1000));
}

/** Replaces a zone file's content. */
export function writeZone(dir: string, file: string, lines: string | readonly string[]): string {
  checkFile(file);
  const full = path.join(dir, file);
  edit(full, () => fs.writeFileSync(full, formatZone(lines)));
  return full;
}

/** Adds lines to a zone file (created if missing). */
export function appendZone(dir: string, file: string, lines: string | readonly string[]): string {
  checkFile(file);
  const full = path.join(dir, file);
  edit(full, () => fs.appendFileSync(full, formatZone(lines)));
  return full;
}

export async function startRbldnsd(opts: RbldnsdOptions): Promise<RbldnsdHandle> {
  const bin = requireTool('rbldnsd');
  const stateDir = sharedDir(opts.stateDir);
  const dir = sharedDir(opts.dir ?? path.join(stateDir, 'rbldnsd'));
  const zones = [...opts.zones];
  rbldnsdArgs({ port: 0, dir, zones }); // validate before touching files
  for (const z of zones) {
    const file = path.join(dir, z.file);
    if (!fs.existsSync(file)) writeZone(dir, z.file, []);
    else fs.chmodSync(file, 0o644);
  }
  const logFile = path.join(stateDir, 'rbldnsd.out');
  const probeName = zones[0]!.name;
  // As root rbldnsd runs as rbldns (the Debian package's user); elsewhere that user may not exist.
  const user = isRoot() && !passwd('rbldns') ? 'nobody' : undefined;

  return onPort(opts.port, 'udp', async (port) => {
    const { pid, readyMs, exited } = await spawnDaemon({
      name: 'rbldnsd',
      command: bin,
      args: rbldnsdArgs({ port, dir, zones, ttl: opts.ttl, user }),
      logFile,
      probe: () => dnsAnswers(`${HOST}:${port}`, probeName),
      timeoutMs: opts.timeoutMs,
      detached: opts.detached,
    });
    return {
      name: 'rbldnsd',
      address: `${HOST}:${port}`,
      port,
      pid,
      dir,
      zones,
      logFile,
      readyMs,
      exited,
      stop: () => stopPid(pid),
    };
  });
}
