/**
 * handover: passes a client's open TCP connection to another local process, as Postfix's postscreen
 * passes a screened client to smtpd, instead of relaying its bytes. The connection itself moves: the
 * receiver reads and writes the client's socket directly, sees the client's own address, and the
 * sender is out of the path from then on.
 *
 * The transport is a Unix SOCK_SEQPACKET socket with SCM_RIGHTS (native/handover.c): one message per
 * connection, carrying the descriptor and a small JSON message (who the client is, bytes the sender
 * already read). Node.js passes handles only to its own children, hence the small addon.
 *
 * Who may hand connections over is whoever may write to the socket file: the receiver creates it
 * with mode 0600 (only its own user), so the same trust as a peer list, enforced by the kernel.
 *
 * Exports handOver, HandoverReceiver and the message type.
 */
import fs from 'node:fs';
import { createRequire } from 'node:module';
import net from 'node:net';
import path from 'node:path';

interface Native {
  send(socketPath: string, fd: number, data: Buffer): void;
  listen(socketPath: string, onMessage: (fd: number, data: Buffer) => void): object;
  close(handle: object): void;
}

const native = createRequire(import.meta.url)('../native/build/Release/handover.node') as Native;

/** What travels with a connection: the client and the server address it reached, as PROXY v1 says them. */
export interface HandoverMessage {
  source: { address: string; port: number };
  destination: { address: string; port: number };
  /** The sender counted this client against the per-client connection limit (allowlisted ones are not). */
  counted: boolean;
  /** Bytes the sender read from the client and did not answer; the receiver reads them first. */
  initial?: Buffer;
}

/** Largest `initial`: more than a pregreet, well inside one message. */
export const MAX_INITIAL = 16 * 1024;

function encode(m: HandoverMessage): Buffer {
  return Buffer.from(
    JSON.stringify({
      v: 1,
      source: m.source,
      destination: m.destination,
      counted: m.counted,
      ...(m.initial?.length ? { initial: m.initial.toString('base64') } : {}),
    }),
  );
}

function endpoint(v: unknown): { address: string; port: number } | undefined {
  const e = v as { address?: unknown; port?: unknown } | null;
  if (!e || typeof e.address !== 'string' || net.isIP(e.address) === 0) return undefined;
  if (typeof e.port !== 'number' || !Number.isInteger(e.port) || e.port < 0 || e.port > 65535)
    return undefined;
  return { address: e.address, port: e.port };
}

/** The message that came with a descriptor, or undefined when it is not one of ours. */
export function decode(data: Buffer): HandoverMessage | undefined {
  let raw: { v?: unknown; source?: unknown; destination?: unknown; counted?: unknown; initial?: unknown };
  try {
    raw = JSON.parse(data.toString('utf8')) as typeof raw;
  } catch {
    return undefined;
  }
  if (raw?.v !== 1) return undefined;
  const source = endpoint(raw.source);
  const destination = endpoint(raw.destination);
  if (!source || !destination || typeof raw.counted !== 'boolean') return undefined;
  if (raw.initial !== undefined && typeof raw.initial !== 'string') return undefined;
  const initial = typeof raw.initial === 'string' ? Buffer.from(raw.initial, 'base64') : undefined;
  return { source, destination, counted: raw.counted, ...(initial?.length ? { initial } : {}) };
}

/** The descriptor of a connected socket: Node keeps it on the socket's handle (-1 when none). */
function descriptor(socket: net.Socket): number {
  const fd = (socket as unknown as { _handle?: { fd?: unknown } })._handle?.fd;
  return typeof fd === 'number' ? fd : -1;
}

/**
 * Hands `socket` over to the receiver bound at `socketPath`, then closes this process's copy of the
 * descriptor (which does not end the connection: the receiver holds it). Never waits. Throws, leaving
 * the socket as it was, when the receiver cannot take it: `code` ENOENT or ECONNREFUSED (no receiver),
 * EAGAIN (it is not keeping up), EBADF (the socket has no descriptor), E2BIG (more than MAX_INITIAL
 * bytes already read: too much for one message).
 */
export function handOver(socketPath: string, socket: net.Socket, message: HandoverMessage): void {
  const fd = descriptor(socket);
  if (fd < 0 || socket.destroyed) {
    throw Object.assign(new Error('handover: the socket has no descriptor'), { code: 'EBADF' });
  }
  if ((message.initial?.length ?? 0) > MAX_INITIAL) {
    throw Object.assign(new Error(`handover: more than ${MAX_INITIAL} bytes already read`), {
      code: 'E2BIG',
    });
  }
  native.send(socketPath, fd, encode(message));
  // destroy() closes the handle (close(2)); it never shuts the connection down, so the copy in
  // flight to the receiver keeps it open
  socket.destroy();
}

export interface HandedSocket {
  socket: net.Socket;
  message: HandoverMessage;
}

/**
 * Receives connections at `socketPath`. A stale socket file left by an earlier run is replaced; each
 * receiver needs its own path (a second one on the same path takes it over).
 */
export class HandoverReceiver {
  #handle: object | undefined;

  private constructor(readonly socketPath: string) {}

  /**
   * Binds `socketPath` (mode 0600) and calls `onSocket` for every connection handed over.
   * `onBad` hears of messages that are not a well-formed handover; their descriptors are closed.
   */
  static listen(
    socketPath: string,
    onSocket: (h: HandedSocket) => void,
    onBad: (why: string) => void,
  ): HandoverReceiver {
    const r = new HandoverReceiver(socketPath);
    fs.mkdirSync(path.dirname(socketPath), { recursive: true });
    fs.rmSync(socketPath, { force: true });
    const umask = process.umask(0o177);
    try {
      r.#handle = native.listen(socketPath, (fd, data) => {
        if (fd < 0) {
          onBad('a message without exactly one descriptor');
          return;
        }
        const message = decode(data);
        if (!message) {
          fs.closeSync(fd);
          onBad('a message that is not a handover');
          return;
        }
        let socket: net.Socket;
        try {
          socket = new net.Socket({ fd, readable: true, writable: true });
        } catch (err) {
          fs.closeSync(fd);
          onBad(`not a socket: ${(err as Error).message}`);
          return;
        }
        try {
          onSocket({ socket, message });
        } catch (err) {
          // a throw here would reach the addon's callback scope and end the process
          socket.destroy();
          onBad(`the receiver failed on a connection: ${(err as Error).message}`);
        }
      });
    } finally {
      process.umask(umask);
    }
    return r;
  }

  /** Stops receiving and removes the socket file. Connections already received are not touched. */
  close(): void {
    if (!this.#handle) return;
    native.close(this.#handle);
    this.#handle = undefined;
    fs.rmSync(this.socketPath, { force: true });
  }
}
