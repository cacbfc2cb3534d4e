/**
 * durable-writer: writeDurable's contract for whole messages, done by one worker thread with
 * synchronous calls (durable-worker.ts).
 *
 * Why it exists: every call of Node's fs API is a round trip through the libuv thread pool (a futex
 * to wake a pool thread, an eventfd write to wake the loop again). writeDurable pays that five times
 * a message (open, writev, fsync, close, rename) plus the directory fsync: delivery measured 1.07 ms
 * CPU, 28 voluntary context switches and 58 futex calls per 1 KB message (smtp-source, 10 sessions,
 * one message per connection, whole chain). Here the main thread posts the message once, the worker
 * does every call without a hop, the writes that arrived together share one fsync per directory, and
 * one message comes back per batch. Measured in one run, same load: delivery 0.87 -> 0.60 ms CPU and
 * 24 -> 7 voluntary context switches per message (with direct Maildir delivery, see apps/delivery);
 * delivery alone, many messages per connection: 0.44 -> 0.29 ms, at the same rate.
 *
 * Messages up to `maxBytes` go to the worker whole (read into memory first; the main thread collects
 * everything written in one turn into one post). Larger ones keep writeDurable's streaming path, so
 * memory per message stays bounded.
 *
 * Failures: a write that fails rejects with the worker's error (code kept). A worker that dies
 * (crash, terminate, out of memory) or stops answering for `timeoutMs` fails every write it holds,
 * their temporary and final files are removed once it is gone, and the next write starts a new one:
 * no write waits forever and none is reported done that is not durable.
 */
import fsp from 'node:fs/promises';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import {
  finalName,
  tmpPathFor,
  writeDurable,
  type DurableWriteOptions,
  type DurableWriteResult,
  type FinalName,
  type Part,
} from './durable.js';
import type { BatchDone, JobResult, WriteJob } from './durable-worker.js';

export interface DurableWriterOptions {
  /** Messages up to this many bytes go to the worker whole; larger ones stream (writeDurable). */
  maxBytes?: number;
  /** With writes outstanding, the worker must answer within this time or is replaced. */
  timeoutMs?: number;
  /** The worker script; default durable-worker.js beside this module (tests pass stand-ins). */
  workerUrl?: URL;
  /** Told of every batch the worker finished: how many writes, how many directory fsyncs. */
  onBatch?(batch: { jobs: number; dirSyncs: number }): void;
}

interface Pending {
  tmp: string;
  path: string;
  /** The final name is replaced (DurableWriteOptions.replace): never removed on a failure. */
  replace: boolean;
  bytes: number;
  resolve(r: DurableWriteResult): void;
  reject(err: Error): void;
}

/**
 * What a write that failed with its worker may have left: its temporary file, and its final name unless
 * that replaced a file (then it is the old file or the newer state, and the only copy).
 */
const leftBy = (p: Pending): string[] => (p.replace ? [p.tmp] : [p.tmp, p.path]);

/** One worker thread and the writes it holds. */
interface Generation {
  worker: Worker;
  pending: Map<number, Pending>;
  /** Files of writes that failed with the worker: removed once it has exited. */
  orphans: string[];
  /** Why it was stopped (close); otherwise its exit code and error say it. */
  reason: Error | undefined;
  /** Resolves once the worker has exited, its files are removed and its writes failed. */
  gone: Promise<void>;
  timer: NodeJS.Timeout | undefined;
  error: Error | undefined;
}

/**
 * From dist/, the compiled worker sits beside this file. Under vitest this module runs from src/
 * (TypeScript, which Node 20 cannot start as a worker): use the build (the spool package's vitest
 * setup compiles it first).
 */
function defaultWorkerUrl(): URL {
  const fromSource = import.meta.url.endsWith('.ts');
  return new URL(fromSource ? '../dist/durable-worker.js' : './durable-worker.js', import.meta.url);
}

export class DurableWriter {
  readonly maxBytes: number;
  readonly timeoutMs: number;
  readonly #workerUrl: URL;
  readonly #onBatch: DurableWriterOptions['onBatch'];
  #current: Generation | undefined;
  #outbox: { job: WriteJob; pending: Pending }[] = [];
  #flushScheduled = false;
  #nextId = 0;

  constructor(o: DurableWriterOptions = {}) {
    this.maxBytes = o.maxBytes ?? 1024 * 1024;
    this.timeoutMs = o.timeoutMs ?? 30_000;
    this.#workerUrl = o.workerUrl ?? defaultWorkerUrl();
    this.#onBatch = o.onBatch;
  }

  /** writeDurable, through the worker when the message fits in `maxBytes`. */
  async write(
    dir: string,
    name: FinalName,
    parts: readonly Part[],
    opts: DurableWriteOptions = {},
  ): Promise<DurableWriteResult> {
    const read = await readUpTo(parts, this.maxBytes);
    if (read.rest) return writeDurable(dir, name, [...read.chunks, read.rest], opts);
    // one fresh ArrayBuffer holding exactly the message, moved to the worker without a copy
    const data = new ArrayBuffer(read.bytes);
    const view = new Uint8Array(data);
    let off = 0;
    for (const c of read.chunks) {
      view.set(c, off);
      off += c.length;
    }
    const final = path.join(dir, finalName(name, read.bytes));
    const tmp = tmpPathFor(dir, name, opts);
    return new Promise<DurableWriteResult>((resolve, reject) => {
      const replace = !!opts.replace;
      const job: WriteJob = { id: ++this.#nextId, tmp, final, dir, data, replace };
      this.#outbox.push({ job, pending: { tmp, path: final, replace, bytes: read.bytes, resolve, reject } });
      if (!this.#flushScheduled) {
        this.#flushScheduled = true;
        // after this turn's I/O callbacks: every session that finished DATA in it shares one post
        setImmediate(() => this.#flush());
      }
    });
  }

  /**
   * Stops the worker. Writes still in it fail once what they left on disk is removed; this resolves
   * after that. A later write starts a new worker.
   */
  async close(): Promise<void> {
    const g = this.#current;
    if (!g) return;
    this.#current = undefined;
    g.reason ??= new Error('durable writer closed');
    void g.worker.terminate();
    await g.gone;
  }

  #flush(): void {
    this.#flushScheduled = false;
    const batch = this.#outbox.splice(0);
    if (!batch.length) return;
    let g: Generation;
    try {
      g = this.#current ?? this.#start();
    } catch (err) {
      for (const { pending } of batch) pending.reject(err as Error);
      return;
    }
    for (const { job, pending } of batch) g.pending.set(job.id, pending);
    g.worker.ref();
    g.worker.postMessage(
      batch.map((b) => b.job),
      batch.map((b) => b.job.data),
    );
    g.timer ??= this.#watchdog(g);
  }

  #start(): Generation {
    const worker = new Worker(this.#workerUrl);
    let exited!: (code: number) => void;
    const exit = new Promise<number>((resolve) => (exited = resolve));
    const g: Generation = {
      worker,
      pending: new Map(),
      orphans: [],
      timer: undefined,
      error: undefined,
      reason: undefined,
      gone: exit.then(async (code) => {
        const why = g.error ? `: ${g.error.message}` : '';
        const err =
          g.reason ?? new Error(`durable writer thread exited with code ${code}${why}`, { cause: g.error });
        const held = this.#detach(g);
        // nothing of a dead worker is still being written: what it left goes before the writes fail,
        // so a 4xx never leaves a copy behind
        const files = [...g.orphans.splice(0), ...held.flatMap(leftBy)];
        await Promise.all(files.map((f) => fsp.rm(f, { force: true }).catch(() => undefined)));
        for (const p of held) p.reject(err);
      }),
    };
    worker.unref();
    worker.on('message', (done: BatchDone) => this.#settle(g, done));
    worker.on('error', (err) => (g.error ??= err));
    worker.on('exit', exited);
    this.#current = g;
    return g;
  }

  #settle(g: Generation, done: BatchDone): void {
    for (const r of done.results) {
      const p = g.pending.get(r.id);
      if (!p) continue;
      g.pending.delete(r.id);
      if (r.ok) p.resolve({ path: p.path, bytes: p.bytes });
      else p.reject(errorOf(r));
    }
    clearTimeout(g.timer);
    g.timer = g.pending.size ? this.#watchdog(g) : undefined;
    if (!g.pending.size) g.worker.unref();
    this.#onBatch?.({ jobs: done.jobs, dirSyncs: done.dirSyncs });
  }

  #watchdog(g: Generation): NodeJS.Timeout {
    const t = setTimeout(() => {
      this.#retire(g, new Error(`durable writer thread did not answer within ${this.timeoutMs} ms`));
      void g.worker.terminate();
    }, this.timeoutMs);
    t.unref();
    return t;
  }

  /**
   * Fails every write the worker holds at once (it may be stuck: its files are removed when it has
   * exited); the next write starts a new worker.
   */
  #retire(g: Generation, err: Error): void {
    for (const p of this.#detach(g)) {
      g.orphans.push(...leftBy(p));
      p.reject(err);
    }
  }

  /** Takes the worker out of service and hands over the writes it holds. */
  #detach(g: Generation): Pending[] {
    if (this.#current === g) this.#current = undefined;
    clearTimeout(g.timer);
    g.timer = undefined;
    const held = [...g.pending.values()];
    g.pending.clear();
    return held;
  }
}

function errorOf(r: Extract<JobResult, { ok: false }>): Error {
  return Object.assign(new Error(r.message), r.code ? { code: r.code } : {});
}

/**
 * Reads `parts` into memory up to `limit` bytes. Past it, `rest` continues where reading stopped
 * (the chunks read so far come first), for the streaming path.
 */
async function readUpTo(
  parts: readonly Part[],
  limit: number,
): Promise<{ chunks: Buffer[]; bytes: number; rest?: AsyncIterable<Buffer> }> {
  const chunks: Buffer[] = [];
  let bytes = 0;
  for (let i = 0; i < parts.length; i++) {
    const part = parts[i]!;
    if (Buffer.isBuffer(part)) {
      chunks.push(part);
      bytes += part.length;
      if (bytes > limit) return { chunks, bytes, rest: concat(parts.slice(i + 1)) };
      continue;
    }
    const it = (part as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
    for (;;) {
      const next = await it.next();
      if (next.done) break;
      chunks.push(next.value);
      bytes += next.value.length;
      if (bytes > limit)
        return { chunks, bytes, rest: concat([{ [Symbol.asyncIterator]: () => it }, ...parts.slice(i + 1)]) };
    }
  }
  return { chunks, bytes };
}

async function* concat(parts: readonly Part[]): AsyncGenerator<Buffer> {
  for (const part of parts) {
    if (Buffer.isBuffer(part)) yield part;
    else yield* part as AsyncIterable<Buffer>;
  }
}
