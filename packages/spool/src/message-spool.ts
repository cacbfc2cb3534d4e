/**
 * message-spool: holds one message while a hop works on it (scanning, forwarding), re-readable as
 * often as needed. Small messages stay in memory; past `memoryLimit` the message spills to a file in
 * `dir`, so memory per message stays bounded whatever its size. Temporary: nothing here is fsynced.
 */
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';

let counter = 0;

/** The spill files' names (`spool-<pid>-<ms>-<n>`), for removeOrphans at start-up. */
export const SPOOL_NAME = /^spool-(\d+)-/;

export class MessageSpool {
  #chunks: Buffer[] = [];
  #size = 0;
  #file: string | undefined;
  #handle: fsp.FileHandle | undefined;

  private constructor(
    private readonly dir: string,
    private readonly memoryLimit: number,
  ) {}

  get size(): number {
    return this.#size;
  }

  /** The spill file, when the message was too large for memory. */
  get file(): string | undefined {
    return this.#file;
  }

  /** Reads `source` to its end. A source error rejects and removes what was spooled. */
  static async from(
    source: AsyncIterable<Buffer>,
    opts: { dir: string; memoryLimit: number },
  ): Promise<MessageSpool> {
    const spool = new MessageSpool(opts.dir, opts.memoryLimit);
    try {
      for await (const chunk of source) await spool.#add(chunk);
      if (spool.#handle) {
        await spool.#flushToFile();
        await spool.#handle.close();
        spool.#handle = undefined;
      }
      return spool;
    } catch (err) {
      await spool.dispose();
      throw err;
    }
  }

  static fromBuffer(buf: Buffer): MessageSpool {
    const spool = new MessageSpool('', Infinity);
    spool.#chunks = [buf];
    spool.#size = buf.length;
    return spool;
  }

  async #add(chunk: Buffer): Promise<void> {
    this.#size += chunk.length;
    this.#chunks.push(chunk);
    if (this.#size > this.memoryLimit) {
      if (!this.#handle) {
        await fsp.mkdir(this.dir, { recursive: true });
        this.#file = path.join(this.dir, `spool-${process.pid}-${Date.now()}-${++counter}`);
        this.#handle = await fsp.open(this.#file, 'wx', 0o600);
      }
      if (this.#chunks.reduce((n, c) => n + c.length, 0) >= 256 * 1024) await this.#flushToFile();
    }
  }

  async #flushToFile(): Promise<void> {
    if (!this.#handle || !this.#chunks.length) return;
    const buf = Buffer.concat(this.#chunks);
    this.#chunks = [];
    // a write may take only part of the buffer (the disk filled up in the middle of it): write the
    // rest, so the next write fails with the error (ENOSPC) instead of a silently shorter spool file,
    // which was scanned and forwarded as if it were the whole message
    for (let off = 0; off < buf.length;) {
      const { bytesWritten } = await this.#handle.write(buf, off, buf.length - off);
      if (bytesWritten <= 0) throw new Error(`${this.#file}: short write: ${off} of ${buf.length} bytes`);
      off += bytesWritten;
    }
  }

  /** The whole message in memory (only for messages that did not spill). */
  buffer(): Buffer | undefined {
    if (this.#file) return undefined;
    // joined once: every reader (each check, the forwarded copy) shares the one copy
    if (this.#chunks.length !== 1) this.#chunks = [Buffer.concat(this.#chunks, this.#size)];
    return this.#chunks[0]!;
  }

  /** A fresh stream of the message from its start. */
  stream(opts: { start?: number; end?: number; highWaterMark?: number } = {}): Readable {
    if (this.#file) {
      return fs.createReadStream(this.#file, {
        highWaterMark: opts.highWaterMark ?? 256 * 1024,
        start: opts.start,
        end: opts.end,
      });
    }
    const all = this.buffer()!;
    const slice = all.subarray(opts.start ?? 0, opts.end === undefined ? undefined : opts.end + 1);
    return Readable.from([slice], { objectMode: false });
  }

  async dispose(): Promise<void> {
    this.#chunks = [];
    if (this.#handle) {
      await this.#handle.close().catch(() => undefined);
      this.#handle = undefined;
    }
    if (this.#file) {
      await fsp.rm(this.#file, { force: true });
      this.#file = undefined;
    }
  }
}
