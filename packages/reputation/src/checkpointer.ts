/**
 * checkpointer: SQLite WAL checkpoints on a worker thread, so their copying and fsyncs never stop the
 * event loop that answers mail. Exports startCheckpointer and Checkpointer.
 *
 * Why: with synchronous=NORMAL a commit does not fsync, a checkpoint does (the WAL, then the database
 * file). Left to SQLite's automatic checkpoint, the committing thread copies about 1000 pages and waits
 * for two fsyncs, 5 to 25 ms on the disks measured, holding every request in flight.
 *
 * Promises:
 * - the worker opens its own connection to the same file and runs a PASSIVE checkpoint every
 *   intervalMs: it never blocks a writer or a reader (other processes' included) and gives way when
 *   another checkpoint runs;
 * - it is best effort: should the worker not start or die, onLost is called once (sqlite-store.ts
 *   then gives its own connection back SQLite's usual automatic checkpoint);
 * - the thread is unref'd (it never keeps a process alive) and stop() closes its connection.
 */
import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';

const WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
const Database = require(workerData.driver);
let db;
try {
  db = new Database(workerData.file, { timeout: workerData.timeoutMs });
} catch {
  parentPort.close();
}
if (db) {
  const checkpoint = () => {
    try {
      db.pragma('wal_checkpoint(PASSIVE)');
    } catch {
      // busy (another checkpoint) or gone: the next round, or the main connection, does it
    }
  };
  const timer = setInterval(checkpoint, workerData.intervalMs);
  parentPort.on('message', () => {
    clearInterval(timer);
    checkpoint();
    db.close();
    parentPort.close();
  });
}
`;

export interface Checkpointer {
  stop(): Promise<void>;
}

export function startCheckpointer(
  file: string,
  intervalMs: number,
  timeoutMs: number,
  onLost: () => void,
): Checkpointer {
  let worker: Worker;
  try {
    const driver = createRequire(import.meta.url).resolve('better-sqlite3');
    worker = new Worker(WORKER, { eval: true, workerData: { file, intervalMs, timeoutMs, driver } });
  } catch {
    onLost();
    return { stop: async () => undefined };
  }
  worker.unref();
  worker.on('error', () => undefined);
  let exited = false;
  let stopping = false;
  const gone = new Promise<void>((resolve) =>
    worker.once('exit', () => {
      exited = true;
      if (!stopping) onLost();
      resolve();
    }),
  );
  return {
    async stop() {
      if (exited) return;
      stopping = true;
      worker.postMessage('stop');
      const timer = setTimeout(() => void worker.terminate(), timeoutMs + 1000);
      await gone;
      clearTimeout(timer);
    },
  };
}
