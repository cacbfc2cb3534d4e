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

interface DirState {
  running: Promise<void> | undefined;
  waiters: { resolve(): void; reject(e: Error): void }[];
}

const dirs = new Map<string, DirState>();

async function fsyncDir(dir: string): Promise<void> {
  const handle = await fsp.open(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Resolves once every rename into `dir` that completed before this call is durable. */
export function syncDir(dir: string): Promise<void> {
  let state = dirs.get(dir);
  if (!state) {
    state = { running: undefined, waiters: [] };
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
  s.running = fsyncDir(dir).then(
    () => batch.forEach((w) => w.resolve()),
    (err: Error) => batch.forEach((w) => w.reject(err)),
  );
  void s.running.finally(() => {
    s.running = undefined;
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

/**
 * Writes `parts` (buffers, or streams read to their end, in order) to `dir/name` durably. On any
 * failure (including a stream that errors, e.g. a client that went away) the temporary file is
 * removed and the error thrown: nothing half-written is ever left under the final name.
 */
export async function writeDurable(
  dir: string,
  name: string,
  parts: readonly (Buffer | Readable | AsyncIterable<Buffer>)[],
): Promise<DurableWriteResult> {
  const tmp = tmpName(dir, name);
  const final = path.join(dir, name);
  const handle = await fsp.open(tmp, 'wx', 0o640);
  let bytes = 0;
  let ok = false;
  try {
    let pending: Buffer[] = [];
    let pendingBytes = 0;
    const flush = async () => {
      if (!pendingBytes) return;
      const buf = pending.length === 1 ? pending[0]! : Buffer.concat(pending, pendingBytes);
      pending = [];
      pendingBytes = 0;
      await handle.write(buf);
    };
    const add = async (b: Buffer) => {
      pending.push(b);
      pendingBytes += b.length;
      bytes += b.length;
      if (pendingBytes >= 256 * 1024) await flush();
    };
    for (const part of parts) {
      if (Buffer.isBuffer(part)) await add(part);
      else for await (const chunk of part as AsyncIterable<Buffer>) await add(chunk);
    }
    await flush();
    await handle.sync();
    ok = true;
  } finally {
    await handle.close();
    if (!ok) await fsp.rm(tmp, { force: true });
  }
  await fsp.rename(tmp, final);
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
