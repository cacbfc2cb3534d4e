/**
 * durable: the one way Moat puts a file on disk when a 250 depends on it: write to a temporary name,
 * fsync the file, rename it into place, fsync the directory. (Haraka fsyncs the file but not the
 * directory: after a crash the name can be gone. Not here.)
 *
 * Directory fsyncs are group-committed: renames that finish while one fsync of their directory is in
 * flight wait for the next one, which then covers all of them. Under load that turns N directory
 * fsyncs into a handful, without ever answering before the rename is durable.
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { promisify } from 'node:util';

// The callback API, promisified: on the mail path it costs noticeably less CPU per call than
// fs/promises' FileHandle objects (one of the costs a delivery profile showed).
const open = promisify(fs.open);
const writev = promisify(fs.writev);
const fsync = promisify(fs.fsync);
const close = promisify(fs.close);
const rename = promisify(fs.rename);
const unlink = promisify(fs.unlink);

interface DirState {
  fd: Promise<number> | undefined;
  running: boolean;
  waiters: { resolve(): void; reject(e: Error): void }[];
}

const dirs = new Map<string, DirState>();

/** Resolves once every rename into `dir` that completed before this call is durable. */
export function syncDir(dir: string): Promise<void> {
  let state = dirs.get(dir);
  if (!state) {
    state = { fd: undefined, running: false, waiters: [] };
    dirs.set(dir, state);
  }
  const s = state;
  return new Promise<void>((resolve, reject) => {
    s.waiters.push({ resolve, reject });
    if (!s.running) run(dir, s);
  });
}

function run(dir: string, s: DirState): void {
  const batch = s.waiters.splice(0);
  s.running = true;
  // the directory stays open: one fsync per batch, no open/close around it
  s.fd ??= open(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
  s.fd
    .then((fd) => fsync(fd))
    .then(
      () => batch.forEach((w) => w.resolve()),
      (err: Error) => {
        s.fd = undefined;
        batch.forEach((w) => w.reject(err));
      },
    )
    .finally(() => {
      s.running = false;
      if (s.waiters.length) run(dir, s);
    });
}

let tmpCounter = 0;

/** A temporary name beside the final one, unique in this process and across processes. */
export function tmpName(dir: string, name: string): string {
  return path.join(dir, `.${name}.${process.pid}.${++tmpCounter}.tmp`);
}

export interface DurableWriteResult {
  path: string;
  bytes: number;
}

type Part = Buffer | Readable | AsyncIterable<Buffer>;

/**
 * Writes `parts` (buffers, or streams read to their end, in order) to `dir/name` durably. On any
 * failure (including a stream that errors, e.g. a client that went away) the temporary file is
 * removed and the error thrown: nothing half-written is ever left under the final name.
 * `opts.tmpDir` puts the temporary file in another folder of the same file system (Maildir's tmp/).
 */
export async function writeDurable(
  dir: string,
  name: string,
  parts: readonly Part[],
  opts: { tmpDir?: string } = {},
): Promise<DurableWriteResult> {
  // Maildir writes under tmp/ and renames into new/; a queue writes a dot-name beside the final one
  const tmp = opts.tmpDir ? path.join(opts.tmpDir, name) : tmpName(dir, name);
  const final = path.join(dir, name);
  const fd = await open(tmp, 'wx', 0o640);
  let bytes = 0;
  let ok = false;
  try {
    let pending: Buffer[] = [];
    let pendingBytes = 0;
    const flush = async () => {
      if (!pendingBytes) return;
      const bufs = pending;
      pending = [];
      pendingBytes = 0;
      const expected = bufs.reduce((n, b) => n + b.length, 0);
      const { bytesWritten: written } = await writev(fd, bufs);
      // regular files take everything or fail; anything else is a failure, not a short message
      if (written !== expected) throw new Error(`short write: ${written} of ${expected} bytes`);
    };
    for (const part of parts) {
      if (Buffer.isBuffer(part)) {
        pending.push(part);
        pendingBytes += part.length;
        bytes += part.length;
      } else {
        for await (const chunk of part as AsyncIterable<Buffer>) {
          pending.push(chunk);
          pendingBytes += chunk.length;
          bytes += chunk.length;
          if (pendingBytes >= 256 * 1024) await flush();
        }
      }
    }
    await flush();
    await fsync(fd);
    ok = true;
  } finally {
    await close(fd);
    if (!ok) await unlink(tmp).catch(() => undefined);
  }
  await rename(tmp, final);
  await syncDir(dir);
  return { path: final, bytes };
}

/** Renames durably (both directories fsynced when they differ). */
export async function renameDurable(from: string, to: string): Promise<void> {
  await fsp.rename(from, to);
  const a = path.dirname(from);
  const b = path.dirname(to);
  await (a === b ? syncDir(b) : Promise.all([syncDir(a), syncDir(b)]));
}

/** Removes durably. */
export async function removeDurable(file: string): Promise<void> {
  await fsp.rm(file, { force: true });
  await syncDir(path.dirname(file));
}

/**
 * Removes a file that only has to be gone eventually: if a crash undoes the unlink, the file is found
 * again (a queue file is then delivered twice, never lost), so no directory fsync is paid for it.
 */
export async function removeLazily(file: string): Promise<void> {
  await unlink(file).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'ENOENT') throw err;
  });
}
