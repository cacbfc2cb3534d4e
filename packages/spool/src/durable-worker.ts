/**
 * durable-worker: the thread behind DurableWriter (durable-writer.ts). It takes whole messages in
 * batches and puts each on disk with synchronous calls, which cost no thread hop here: open the
 * temporary name, write, fsync, close, rename to the final name; then one fsync of each directory
 * the batch renamed into; then one message back with every result of the batch.
 *
 * Promises what writeDurable promises: a result says ok only once the file and its directory entry
 * are durable; nothing half-written is left under the final name; a failed write removes its
 * temporary file (and its final name, when only the directory fsync failed, since the caller
 * answers 4xx and the sender will try again).
 *
 * Its own ES module, started by file name: dist/durable-worker.js beside dist/durable-writer.js.
 */
import fs from 'node:fs';
import { parentPort } from 'node:worker_threads';

/** One message to write: `data` is transferred (moved, not copied) from the main thread. */
export interface WriteJob {
  id: number;
  tmp: string;
  final: string;
  dir: string;
  data: ArrayBuffer;
}

export type JobResult = { id: number; ok: true } | { id: number; ok: false; message: string; code?: string };

/** The answer to one batch. */
export interface BatchDone {
  results: JobResult[];
  /** Jobs in the batch, and directory fsyncs it cost. */
  jobs: number;
  dirSyncs: number;
}

const port = parentPort;
if (!port) throw new Error('durable-worker: runs only as a worker thread (see DurableWriter)');

const queue: WriteJob[] = [];
let scheduled = false;

// Every message that arrives in one turn of this thread's loop (including those that queued up
// while the previous batch was in fsync) joins one batch: setImmediate runs after the port drained.
port.on('message', (jobs: WriteJob[]) => {
  queue.push(...jobs);
  if (!scheduled) {
    scheduled = true;
    setImmediate(runBatch);
  }
});

function runBatch(): void {
  scheduled = false;
  const jobs = queue.splice(0);
  const results: JobResult[] = [];
  const renamed = new Map<string, WriteJob[]>();
  for (const job of jobs) {
    try {
      writeOne(job);
      const list = renamed.get(job.dir);
      if (list) list.push(job);
      else renamed.set(job.dir, [job]);
    } catch (err) {
      results.push(failure(job, err));
    }
  }
  let dirSyncs = 0;
  for (const [dir, list] of renamed) {
    try {
      dirSyncs++;
      syncDirectory(dir);
      for (const job of list) results.push({ id: job.id, ok: true });
    } catch (err) {
      for (const job of list) {
        removeQuietly(job.final);
        results.push(failure(job, err));
      }
    }
  }
  port!.postMessage({ results, jobs: jobs.length, dirSyncs } satisfies BatchDone);
}

function writeOne(job: WriteJob): void {
  const data = new Uint8Array(job.data);
  const fd = fs.openSync(job.tmp, 'wx', 0o640);
  try {
    try {
      for (let off = 0; off < data.length;) {
        const n = fs.writeSync(fd, data, off, data.length - off);
        if (n <= 0) throw new Error(`short write: ${off} of ${data.length} bytes`);
        off += n;
      }
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(job.tmp, job.final);
  } catch (err) {
    removeQuietly(job.tmp);
    throw err;
  }
}

/**
 * Opened for each batch, not kept open: a folder that was removed and made again (a mailbox deleted,
 * then mail for it) is a new inode, and an fsync on a descriptor of the old one would make none of
 * the new renames durable while reporting success.
 */
function syncDirectory(dir: string): void {
  const fd = fs.openSync(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
  try {
    fs.fsyncSync(fd);
  } finally {
    closeQuietly(fd);
  }
}

function removeQuietly(file: string): void {
  try {
    fs.unlinkSync(file);
  } catch {
    // already gone, or the folder itself is unusable: nothing more to do from here
  }
}

function closeQuietly(fd: number): void {
  try {
    fs.closeSync(fd);
  } catch {
    // the descriptor is released either way
  }
}

function failure(job: WriteJob, err: unknown): JobResult {
  const e = err as NodeJS.ErrnoException;
  return { id: job.id, ok: false, message: e?.message ?? String(err), code: e?.code };
}
