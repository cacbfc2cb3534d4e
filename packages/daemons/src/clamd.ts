/**
 * clamd: a real ClamAV daemon on loopback with a one-signature database (EICAR only: the official
 * databases need the internet). Exports startClamd, clamdConfig (the clamd.conf text), EICAR_HEX,
 * eicar() (the test string, built at run time so this file itself is not flagged), eicarSignature
 * (the .ndb line), clamdPing and clamdScan (zPING / zINSTREAM over TCP or the unix socket).
 */
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import {
  type CommonOptions,
  type DaemonHandle,
  HOST,
  onPort,
  sharedDir,
  spawnDaemon,
  stopPid,
  writeShared,
} from './process.js';
import { requireTool } from './tools.js';

export const EICAR_HEX =
  '58354f2150254041505b345c505a58353428505e2937434329377d2445494341522d5354414e444152442d414e544956495255532d544553542d46494c452124482b482a';

/** The 68-byte EICAR anti-virus test string. */
export function eicar(): string {
  return Buffer.from(EICAR_HEX, 'hex').toString('latin1');
}

/**
 * A body signature (.ndb: Name:TargetType:Offset:HexBytes); unsigned, so clamd reports it as
 * Eicar-Test-Signature.UNOFFICIAL.
 */
export function eicarSignature(): string {
  return `Eicar-Test-Signature:0:*:${EICAR_HEX}`;
}

export interface ClamdConfigParams {
  databaseDir: string;
  port: number;
  /** Where clamd keeps each INSTREAM while it scans it; default: /dev/shm when there is one. */
  tmpDir?: string;
  socket: string;
  logFile: string;
}

function writable(dir: string): boolean {
  try {
    fs.accessSync(dir, fs.constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

export function clamdConfig(p: ClamdConfigParams): string {
  const tmpDir = p.tmpDir ?? (writable('/dev/shm') ? '/dev/shm' : undefined);
  return [
    '# written by @moat/daemons',
    'Foreground yes',
    `DatabaseDirectory ${p.databaseDir}`,
    `TCPSocket ${p.port}`,
    `TCPAddr ${HOST}`,
    `LocalSocket ${p.socket}`,
    'LocalSocketMode 666',
    'SelfCheck 0',
    'Bytecode no',
    `LogFile ${p.logFile}`,
    'LogTime yes',
    // clamd writes every INSTREAM to a temporary file before scanning it: in RAM, a scan of a small
    // message takes half the time (1 ms instead of 2 at p50 through the chain), and the file's
    // creation and removal stay out of the journal that delivery's fsyncs commit
    ...(tmpDir ? [`TemporaryDirectory ${tmpDir}`] : []),
    'StreamMaxLength 60M',
    'MaxScanSize 100M',
    'MaxFileSize 60M',
    'AlertExceedsMax yes',
    '',
  ].join('\n');
}

export interface ClamdHandle extends DaemonHandle {
  /** The unix socket (mode 666). */
  readonly socket: string;
}

/** sun_path holds 108 bytes; a deep state folder falls back to the temp folder for the socket. */
function socketPath(stateDir: string, port: number): string {
  const wanted = path.join(stateDir, 'clamd.sock');
  return Buffer.byteLength(wanted) <= 100 ? wanted : path.join(os.tmpdir(), `moat-clamd-${port}.sock`);
}

type Target = number | string; // TCP port on 127.0.0.1, or a unix socket path

function connect(target: Target): net.Socket {
  return typeof target === 'number'
    ? net.connect({ host: HOST, port: target })
    : net.connect({ path: target });
}

function exchange(target: Target, write: (s: net.Socket) => void, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const sock = connect(target);
    const timer = setTimeout(() => sock.destroy(new Error(`clamd: no reply in ${timeoutMs} ms`)), timeoutMs);
    sock.on('connect', () => write(sock));
    sock.on('data', (d) => {
      chunks.push(d);
      if (d.includes(0)) sock.end();
    });
    sock.on('close', () => {
      clearTimeout(timer);
      resolve(Buffer.concat(chunks).toString('latin1').replace(/\0+$/, ''));
    });
    sock.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

/** 'PONG' when clamd is up. */
export function clamdPing(target: Target, timeoutMs = 1000): Promise<string> {
  return exchange(target, (s) => s.write('zPING\0'), timeoutMs);
}

/**
 * Streams data with zINSTREAM in 64 KiB chunks; returns clamd's reply, e.g. `stream: OK` or
 * `stream: Eicar-Test-Signature.UNOFFICIAL FOUND`.
 */
export function clamdScan(target: Target, data: string | Buffer, timeoutMs = 10_000): Promise<string> {
  const buf = typeof data === 'string' ? Buffer.from(data, 'latin1') : data;
  return exchange(
    target,
    (s) => {
      s.write('zINSTREAM\0');
      for (let off = 0; off < buf.length; off += 64 * 1024) {
        const chunk = buf.subarray(off, off + 64 * 1024);
        const len = Buffer.alloc(4);
        len.writeUInt32BE(chunk.length);
        s.write(len);
        s.write(chunk);
      }
      s.write(Buffer.alloc(4));
    },
    timeoutMs,
  );
}

export async function startClamd(opts: CommonOptions): Promise<ClamdHandle> {
  const bin = requireTool('clamd');
  const stateDir = sharedDir(opts.stateDir);
  const databaseDir = sharedDir(path.join(stateDir, 'clamav-db'));
  writeShared(path.join(databaseDir, 'moat-test.ndb'), `${eicarSignature()}\n`);
  const logFile = path.join(stateDir, 'clamd.out');
  const clamdLog = path.join(stateDir, 'clamd.log');

  return onPort(opts.port, 'tcp', async (port) => {
    const socket = socketPath(stateDir, port);
    const conf = path.join(stateDir, 'clamd.conf');
    writeShared(conf, clamdConfig({ databaseDir, port, socket, logFile: clamdLog }));
    const { pid, readyMs, exited } = await spawnDaemon({
      name: 'clamd',
      command: bin,
      args: ['-c', conf],
      logFile,
      extraLogs: [clamdLog],
      probe: async () => (await clamdPing(port, 500)) === 'PONG',
      timeoutMs: opts.timeoutMs,
      detached: opts.detached,
    });
    return {
      name: 'clamd',
      address: `${HOST}:${port}`,
      port,
      socket,
      pid,
      logFile,
      readyMs,
      exited,
      stop: () => stopPid(pid),
    };
  });
}
