/**
 * envelope-file: how delivery's queue and the quarantine store keep a message with its envelope in
 * one file: a first line of JSON (the envelope and whatever the service records), then the message
 * bytes exactly as received. One file, one durable write, one rename: the envelope and the message
 * can never be separated by a crash.
 */
import fsp from 'node:fs/promises';
import fs from 'node:fs';
import type { Readable } from 'node:stream';
import {
  writeDurable,
  type DurableWrite,
  type DurableWriteOptions,
  type DurableWriteResult,
} from './durable.js';

export interface EnvelopeFileHead {
  /** Format version. */
  v: 1;
  id: string;
  [key: string]: unknown;
}

export function encodeHead(head: EnvelopeFileHead): Buffer {
  return Buffer.from(JSON.stringify(head) + '\n', 'utf8');
}

/** Writes `dir/<head.id>` durably with `write` (writeDurable, or a DurableWriter's). */
export async function writeEnvelopeFile(
  dir: string,
  head: EnvelopeFileHead,
  message: readonly (Buffer | Readable | AsyncIterable<Buffer>)[],
  write: DurableWrite = writeDurable,
  opts?: DurableWriteOptions,
): Promise<DurableWriteResult> {
  return write(dir, head.id, [encodeHead(head), ...message], opts);
}

/** Reads the head; the message starts at `bodyOffset`. */
export async function readEnvelopeHead<T extends EnvelopeFileHead>(
  file: string,
): Promise<{ head: T; bodyOffset: number; size: number }> {
  const handle = await fsp.open(file, 'r');
  try {
    const { size } = await handle.stat();
    let text = '';
    let offset = 0;
    const buf = Buffer.alloc(64 * 1024);
    for (;;) {
      const { bytesRead } = await handle.read(buf, 0, buf.length, offset);
      if (bytesRead === 0) throw new Error(`${file}: no envelope line`);
      const nl = buf.subarray(0, bytesRead).indexOf(0x0a);
      if (nl >= 0) {
        text += buf.subarray(0, nl).toString('utf8');
        offset += nl + 1;
        break;
      }
      text += buf.subarray(0, bytesRead).toString('utf8');
      offset += bytesRead;
      if (offset > 16 * 1024 * 1024) throw new Error(`${file}: envelope line too long`);
    }
    return { head: JSON.parse(text) as T, bodyOffset: offset, size };
  } finally {
    await handle.close();
  }
}

/** The message bytes of an envelope file. */
export function messageStream(file: string, bodyOffset: number): Readable {
  return fs.createReadStream(file, { start: bodyOffset, highWaterMark: 256 * 1024 });
}
