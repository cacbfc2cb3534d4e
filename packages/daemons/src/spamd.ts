/**
 * spamd: a real SpamAssassin daemon on loopback, in the foreground (no -d, so the pid we spawn is
 * the server), with a private site-config folder: the *.pre files from /etc/spamassassin (they load
 * the plugins) plus a generated local.cf. Exports startSpamd, spamdLocalCf, spamdArgs, and two
 * SPAMC/1.5 helpers: spamdPing and spamdCheck.
 */
import fs from 'node:fs';
import path from 'node:path';
import {
  type CommonOptions,
  type DaemonHandle,
  HOST,
  isRoot,
  onPort,
  passwd,
  sharedDir,
  spawnDaemon,
  stopPid,
  tcpExchange,
  writeShared,
} from './process.js';
import { requireTool } from './tools.js';

export interface SpamdOptions extends CommonOptions {
  /** --max-children; default 2. */
  children?: number;
  /** Appended to local.cf (later lines win), e.g. custom check_rbl rules or util_rb_tld. */
  localCf?: string;
  /** host:port of a DNS server (a local rbldnsd): turns network tests on and sends all DNS there. */
  dnsServer?: string;
}

export const SITE_CONFIG_SOURCE = '/etc/spamassassin';
const SPAMD_USER = 'debian-spamd';

export function spamdLocalCf(opts: { localCf?: string; dnsServer?: string } = {}): string {
  const lines = ['# written by @moat/daemons', 'use_bayes 0', 'bayes_auto_learn 0', 'report_safe 0'];
  if (opts.dnsServer) lines.push('dns_available yes', 'skip_rbl_checks 0', `dns_server ${opts.dnsServer}`);
  else lines.push('dns_available no', 'skip_rbl_checks 1');
  if (opts.localCf) lines.push('', opts.localCf.trimEnd());
  return `${lines.join('\n')}\n`;
}

export interface SpamdArgsParams {
  port: number;
  siteDir: string;
  homeDir: string;
  logFile: string;
  children: number;
  /** Only local tests (-L): when no DNS server is given. */
  local: boolean;
  /** When root: the user and group spamd's children run as. */
  user?: string;
}

export function spamdArgs(p: SpamdArgsParams): string[] {
  return [
    '-x',
    ...(p.local ? ['-L'] : []),
    ...(p.user ? ['-u', p.user, '-g', p.user] : []),
    `--listen=${HOST}:${p.port}`,
    '-A',
    HOST,
    `--siteconfigpath=${p.siteDir}`,
    '-H',
    p.homeDir,
    '-s',
    p.logFile,
    `--max-children=${p.children}`,
    '--min-children=1',
  ];
}

/** Sends one SPAMC/1.5 request and returns the whole reply. */
export function spamcRequest(
  port: number,
  command: string,
  message = '',
  timeoutMs = 10_000,
): Promise<string> {
  const body = Buffer.from(message, 'latin1');
  const head =
    command === 'PING'
      ? 'PING SPAMC/1.5\r\n\r\n'
      : `${command} SPAMC/1.5\r\nContent-length: ${body.length}\r\n\r\n`;
  return tcpExchange(port, Buffer.concat([Buffer.from(head, 'latin1'), body]), undefined, timeoutMs);
}

/** 'SPAMD/1.5 0 PONG' when spamd is up. */
export async function spamdPing(port: number, timeoutMs = 1000): Promise<string> {
  return (await spamcRequest(port, 'PING', '', timeoutMs)).trim();
}

export interface SpamdVerdict {
  spam: boolean;
  score: number;
  threshold: number;
  reply: string;
}

/** CHECK a raw message. */
export async function spamdCheck(port: number, message: string, timeoutMs = 10_000): Promise<SpamdVerdict> {
  const reply = await spamcRequest(port, 'CHECK', message, timeoutMs);
  const m = /^Spam: (True|False) ; (-?[\d.]+) \/ (-?[\d.]+)/m.exec(reply);
  if (!m) throw new Error(`spamd: unexpected reply: ${reply.slice(0, 200)}`);
  return { spam: m[1] === 'True', score: Number(m[2]), threshold: Number(m[3]), reply };
}

export async function startSpamd(opts: SpamdOptions): Promise<DaemonHandle> {
  const bin = requireTool('spamd');
  const stateDir = sharedDir(opts.stateDir);
  const siteDir = sharedDir(path.join(stateDir, 'spamd-site'));
  const homeDir = sharedDir(path.join(stateDir, 'spamd-home'));
  let pre: string[] = [];
  try {
    pre = fs.readdirSync(SITE_CONFIG_SOURCE).filter((f) => f.endsWith('.pre'));
  } catch {
    // no plugins to load: spamd still runs the core rules
  }
  for (const f of pre)
    writeShared(path.join(siteDir, f), fs.readFileSync(path.join(SITE_CONFIG_SOURCE, f), 'utf8'));
  writeShared(path.join(siteDir, 'local.cf'), spamdLocalCf(opts));

  let user: string | undefined;
  if (isRoot()) {
    const ids = passwd(SPAMD_USER);
    user = ids ? SPAMD_USER : 'nobody';
    if (ids) fs.chownSync(homeDir, ids.uid, ids.gid);
  }
  const logFile = path.join(stateDir, 'spamd.out');
  const spamdLog = path.join(stateDir, 'spamd.log');

  return onPort(opts.port, 'tcp', async (port) => {
    const { pid, readyMs, exited } = await spawnDaemon({
      name: 'spamd',
      command: bin,
      args: spamdArgs({
        port,
        siteDir,
        homeDir,
        logFile: spamdLog,
        children: opts.children ?? 2,
        local: !opts.dnsServer,
        user,
      }),
      logFile,
      extraLogs: [spamdLog],
      probe: async () => (await spamdPing(port, 1000)).endsWith('PONG'),
      timeoutMs: opts.timeoutMs,
      detached: opts.detached,
    });
    return {
      name: 'spamd',
      address: `${HOST}:${port}`,
      port,
      pid,
      logFile,
      readyMs,
      exited,
      stop: () => stopPid(pid),
    };
  });
}
