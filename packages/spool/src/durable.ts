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
const write = promisify(fs.write);
const fsync = promisify(fs.fsync);
const close = promisify(fs.close);
const rename = promisify(fs.rename);
const unlink = promisify(fs.unlink);

interface DirState {
  running: boolean;
  waiters: { resolve(): void; reject(e: Error): void }[];
}

const dirs = new Map<string, DirState>();

/** Resolves once every rename into `dir` that completed before this call is durable. */
export function syncDir(dir: string): Promise<void> {
  let state = dirs.get(dir);
  if (!state) {
    state = { running: false, waiters: [] };
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
  // opened for each batch, not kept open: a folder removed and made again is a new inode, and an
  // fsync on a descriptor of the old one would make none of the new renames durable
  open(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY)
    .then((fd) => fsync(fd).finally(() => close(fd).catch(() => undefined)))
    .then(
      () => batch.forEach((w) => w.resolve()),
      (err: Error) => batch.forEach((w) => w.reject(err)),
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

/** tmpName's names; the first group is the pid of the process that wrote it. */
export const TMP_NAME = /^\..*\.(\d+)\.\d+\.tmp$/;

/**
 * Removes the temporary files in `dir` that a process which is gone left behind (killed in the
 * middle of a write: what it wrote was never answered 250, so nothing is lost). `pattern` matches the
 * names and gives the writer's pid as its first group; files of this process's own pid are left over
 * from an earlier process that had it (a container restarts with the same pid). Returns how many went.
 * Call it at start-up only: files of another live process on the same folder are kept.
 */
export async function removeOrphans(dir: string, pattern: RegExp = TMP_NAME): Promise<number> {
  let names: string[];
  try {
    names = await fsp.readdir(dir);
  } catch {
    return 0; // no folder yet: nothing left over
  }
  let removed = 0;
  for (const name of names) {
    const pid = Number(pattern.exec(name)?.[1]);
    if (!Number.isInteger(pid) || pid <= 0 || (pid !== process.pid && alive(pid))) continue;
    await fsp.rm(path.join(dir, name), { force: true });
    removed++;
  }
  return removed;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export interface DurableWriteResult {
  path: string;
  bytes: number;
}

export type Part = Buffer | Readable | AsyncIterable<Buffer>;

/** The final name, or a function of the bytes written (Maildir's `,S=<size>`). */
export type FinalName = string | ((bytes: number) => string);

export interface DurableWriteOptions {
  /** Write the temporary file in this folder of the same file system (Maildir's tmp/). */
  tmpDir?: string;
  /** Its name there; default: the final name (which must then be a string). */
  tmpName?: string;
  /**
   * The final name may exist and is replaced (a deferred file rewritten with the recipients still
   * waiting). On a failure the file under it is never removed: it is the one replaced or the newer state,
   * and either way the only copy. A new name (the default) is removed when its write fails after the rename.
   */
  replace?: boolean;
}

/** writeDurable's signature: DurableWriter.write has the same one and the same contract. */
export type DurableWrite = (
  dir: string,
  name: FinalName,
  parts: readonly Part[],
  opts?: DurableWriteOptions,
) => Promise<DurableWriteResult>;

/** Where a write goes before its rename: a Maildir's tmp/<name>, or a dot-name beside the final one. */
export function tmpPathFor(dir: string, name: FinalName, opts: DurableWriteOptions): string {
  const base = opts.tmpName ?? (typeof name === 'string' ? name : undefined);
  if (opts.tmpDir && base) return path.join(opts.tmpDir, base);
  return tmpName(opts.tmpDir ?? dir, base ?? 'write');
}

export function finalName(name: FinalName, bytes: number): string {
  return typeof name === 'string' ? name : name(bytes);
}

/**
 * Writes `parts` (buffers, or streams read to their end, in order) to `dir/name` durably. On any
 * failure (including a stream that errors, e.g. a client that went away) the temporary file is
 * removed and the error thrown: nothing half-written is ever left under the final name.
 */
export const writeDurable: DurableWrite = async (dir, name, parts, opts = {}) => {
  const tmp = tmpPathFor(dir, name, opts);
  const fd = await open(tmp, 'wx', 0o640);
  let bytes = 0;
  let failed = false;
  let failure: unknown;
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
      if (written === expected) return;
      // the disk filled up in the middle of it (write(2) takes what fits and returns the count): the
      // rest is written on, so the error that stops it (ENOSPC, EFBIG, EIO) is the one thrown and
      // logged, not a bare byte count
      let rest = Buffer.concat(bufs).subarray(written);
      while (rest.length) {
        const { bytesWritten: n } = await write(fd, rest, 0, rest.length, null);
        if (n <= 0) throw new Error(`short write: ${expected - rest.length} of ${expected} bytes`);
        rest = rest.subarray(n);
      }
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
  } catch (err) {
    [failed, failure] = [true, err];
  }
  await close(fd).catch((err: unknown) => {
    if (!failed) [failed, failure] = [true, err];
  });
  if (failed) {
    await unlink(tmp).catch(() => undefined);
    throw withPath(failure, tmp);
  }
  const final = path.join(dir, finalName(name, bytes));
  try {
    await rename(tmp, final);
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
  try {
    await syncDir(dir);
  } catch (err) {
    // the rename may not survive a crash, and the caller answers 4xx: a new name goes, or a message the
    // client sends again would be there twice; one that replaced a file stays, as the file it replaced
    // is gone and this is the newer state (the worker thread does the same)
    if (!opts.replace) await unlink(final).catch(() => undefined);
    throw withPath(err, dir);
  }
  return { path: final, bytes };
};

/**
 * A system call's error without its file (write, fsync, close: Node names none) gets the file it was
 * writing, so the log says where the disk failed. Other errors (the body's own) are left as they are.
 */
function withPath(err: unknown, file: string): unknown {
  const e = err as NodeJS.ErrnoException | null;
  if (e instanceof Error && typeof e.syscall === 'string' && !e.path) {
    e.path = file;
    e.message += ` '${file}'`;
  }
  return err;
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
