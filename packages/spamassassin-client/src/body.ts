/**
 * body: the message a request carries, and how it goes onto the socket. Exports SpamdMessage (a
 * Buffer, a string, or { stream, length } for a message spooled on disk), prepareBody (applies
 * maxSize: refuse with kind 'too-large', or truncate to the first maxSize bytes) and writeRequest
 * (request head and body in large writes, the head together with the first body bytes, waiting for
 * 'drain' whenever the socket says so, then a half-close). Promises: a stream is read once, chunk by
 * chunk, never gathered in memory; exactly Content-length bytes are sent or the request fails with
 * kind 'input'.
 */
import type { Socket } from 'node:net';
import type { Readable } from 'node:stream';
import { SpamdError, type SpamdPhase } from './errors.js';
import type { SpamdCommand } from './protocol.js';

/** A message spamd needs to know the length of before it arrives (Content-length). */
export interface SpamdMessageStream {
  /** A Readable (fs.createReadStream) or any async iterable of byte chunks. */
  stream: Readable | AsyncIterable<Uint8Array | string>;
  /** Exactly how many bytes the stream delivers. */
  length: number;
}

/** Raw message bytes (strings are UTF-8 encoded), or a stream with its length. */
export type SpamdMessage = Uint8Array | string | SpamdMessageStream;

export interface SizePolicy {
  /** Messages larger than this many bytes are refused (or truncated). Default: no limit. */
  maxSize?: number;
  /** Send only the first maxSize bytes instead of refusing (as amavis does). Not for PROCESS. */
  truncate?: boolean;
}

export interface PreparedBody {
  /** The Content-length to send. */
  length: number;
  /** The message's own length. */
  originalLength: number;
  truncated: boolean;
  buffer?: Buffer;
  stream?: AsyncIterable<Uint8Array | string>;
  /** Destroys the input stream (when it can be destroyed) after a failure. */
  destroy(): void;
}

interface Context {
  command: SpamdCommand;
  address: string;
}

function inputError(message: string, ctx: Context, phase: SpamdPhase, cause?: unknown): SpamdError {
  return new SpamdError(message, { kind: 'input', phase, address: ctx.address, command: ctx.command, cause });
}

function isStreamMessage(m: SpamdMessage): m is SpamdMessageStream {
  return typeof m === 'object' && !(m instanceof Uint8Array) && 'stream' in m;
}

export function prepareBody(message: SpamdMessage, policy: SizePolicy, ctx: Context): PreparedBody {
  let buffer: Buffer | undefined;
  let stream: AsyncIterable<Uint8Array | string> | undefined;
  let length: number;
  if (typeof message === 'string') {
    buffer = Buffer.from(message, 'utf8');
    length = buffer.length;
  } else if (message instanceof Uint8Array) {
    buffer = Buffer.isBuffer(message)
      ? message
      : Buffer.from(message.buffer, message.byteOffset, message.length);
    length = buffer.length;
  } else if (isStreamMessage(message)) {
    if (!Number.isSafeInteger(message.length) || message.length < 0) {
      throw inputError(`message length ${message.length} is not a byte count`, ctx, 'prepare');
    }
    if (message.stream == null || typeof message.stream[Symbol.asyncIterator] !== 'function') {
      throw inputError('message.stream is not a Readable or async iterable', ctx, 'prepare');
    }
    stream = message.stream;
    length = message.length;
  } else {
    throw inputError('the message must be a Buffer, a string or { stream, length }', ctx, 'prepare');
  }
  const destroy = () => {
    const s = stream as Partial<Readable> | undefined;
    if (s && typeof s.destroy === 'function' && !s.destroyed) s.destroy();
  };

  const max = policy.maxSize;
  if (max !== undefined && (!Number.isSafeInteger(max) || max < 0)) {
    throw inputError(`maxSize ${max} is not a byte count`, ctx, 'prepare');
  }
  if (max === undefined || length <= max) {
    return { length, originalLength: length, truncated: false, buffer, stream, destroy };
  }
  if (!policy.truncate || ctx.command === 'PROCESS') {
    const why =
      policy.truncate && ctx.command === 'PROCESS'
        ? ' (PROCESS returns the message, so it is never truncated)'
        : '';
    throw new SpamdError(`message of ${length} bytes is larger than maxSize ${max} bytes${why}`, {
      kind: 'too-large',
      phase: 'prepare',
      address: ctx.address,
      command: ctx.command,
    });
  }
  return {
    length: max,
    originalLength: length,
    truncated: true,
    buffer: buffer?.subarray(0, max),
    stream,
    destroy,
  };
}

/** Resolves on 'drain', or on 'close' (the caller then sees the socket is gone). */
function drained(socket: Socket): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      socket.off('drain', done);
      socket.off('close', done);
      resolve();
    };
    socket.on('drain', done);
    socket.on('close', done);
  });
}

/** Thrown inside writeRequest once the request is settled elsewhere (timeout, early answer). */
export class Stopped extends Error {
  override readonly name = 'Stopped';
}

export interface WriteOptions {
  /** Writes gather at least this many bytes (except the last). */
  chunkBytes: number;
  /** True once the request is settled: stop writing. */
  stopped: () => boolean;
}

/**
 * Writes head + body and half-closes (spamd reads a last line without a newline only at EOF).
 * Small messages go out in one write. Rejects with Stopped, kind 'input', or the stream's error.
 */
export async function writeRequest(
  socket: Socket,
  head: Buffer,
  body: PreparedBody | undefined,
  opts: WriteOptions,
  ctx: Context,
): Promise<void> {
  const write = async (buf: Buffer) => {
    if (opts.stopped() || socket.destroyed) throw new Stopped();
    if (!socket.write(buf)) await drained(socket);
  };

  if (!body || body.length === 0) {
    await write(head);
  } else if (body.buffer) {
    const buf = body.buffer;
    if (buf.length <= opts.chunkBytes) {
      await write(Buffer.concat([head, buf], head.length + buf.length));
    } else {
      await write(Buffer.concat([head, buf.subarray(0, opts.chunkBytes)]));
      // The rest as one write: Node hands it to the kernel as fast as it drains, without a copy.
      await write(buf.subarray(opts.chunkBytes));
    }
  } else if (body.stream) {
    let pending: Buffer[] = [head];
    let pendingBytes = head.length;
    let sent = 0;
    const flush = async () => {
      if (pending.length === 0) return;
      const buf = pending.length === 1 ? pending[0]! : Buffer.concat(pending, pendingBytes);
      pending = [];
      pendingBytes = 0;
      await write(buf);
    };
    for await (const chunk of body.stream) {
      if (opts.stopped()) throw new Stopped();
      let buf =
        typeof chunk === 'string'
          ? Buffer.from(chunk, 'utf8')
          : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.length);
      if (sent + buf.length > body.length) {
        if (!body.truncated) {
          throw inputError(
            `message stream delivered more than its declared length of ${body.length} bytes`,
            ctx,
            'send',
          );
        }
        buf = buf.subarray(0, body.length - sent);
      }
      if (buf.length === 0) continue;
      pending.push(buf);
      pendingBytes += buf.length;
      sent += buf.length;
      if (pendingBytes >= opts.chunkBytes) await flush();
      if (body.truncated && sent === body.length) break;
    }
    if (sent < body.length) {
      throw inputError(
        `message stream ended after ${sent} of its declared ${body.originalLength} bytes`,
        ctx,
        'send',
      );
    }
    await flush();
  }
  if (opts.stopped() || socket.destroyed) throw new Stopped();
  socket.end();
}
