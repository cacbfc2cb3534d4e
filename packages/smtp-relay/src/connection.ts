/**
 * connection: one SMTP client connection to the next hop. Greeting and EHLO once, then commands, one
 * or several in one write (pipelining), each reply matched to its command in order and bounded by a
 * timeout. TCP_NODELAY is on: every write is a whole command group or a large body chunk, so Nagle
 * would only add its 40 ms stalls (PERFORMANCE.md).
 */
import net from 'node:net';
import type { Reply } from '@moat/smtp-listener';
import { parseHostPort } from '@moat/config';
import { ReplyParser } from './reply-parser.js';
import { relayReplies } from './replies.js';

export type RelayFailure = 'unavailable' | 'timeout' | 'lost' | 'protocol';

/** A failure of the next hop; `reply` is the 4xx to give our own client. */
export class RelayError extends Error {
  constructor(
    readonly kind: RelayFailure,
    message: string,
    readonly target: string,
  ) {
    super(`${target}: ${message}`);
    this.name = 'RelayError';
  }
  get reply(): Reply {
    return relayReplies[this.kind]();
  }
}

export interface Capabilities {
  pipelining: boolean;
  /** BDAT (RFC 3030). */
  chunking: boolean;
  eightBitMime: boolean;
  smtpUtf8: boolean;
  dsn: boolean;
  size: number | undefined;
  /** XFORWARD attribute names the server announced. */
  xforward: Set<string>;
}

interface Waiter {
  resolve(r: Reply): void;
  reject(e: Error): void;
  timer: NodeJS.Timeout | undefined;
}

export interface ConnectionOptions {
  target: string;
  ehloName: string;
  connectTimeoutMs: number;
  timeoutMs: number;
}

export class RelayConnection {
  readonly #socket: net.Socket;
  readonly #parser = new ReplyParser();
  readonly #waiters: Waiter[] = [];
  #dead: Error | undefined;
  caps: Capabilities = {
    pipelining: false,
    chunking: false,
    eightBitMime: false,
    smtpUtf8: false,
    dsn: false,
    size: undefined,
    xforward: new Set(),
  };
  lastUsed = Date.now();
  /** Messages sent over this connection. */
  uses = 0;
  #onDead: (() => void) | undefined;

  private constructor(
    readonly options: ConnectionOptions,
    socket: net.Socket,
  ) {
    this.#socket = socket;
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    socket.on('error', (err) => this.#fail(new RelayError('lost', err.message, options.target)));
    socket.on('close', () =>
      this.#fail(new RelayError('lost', 'connection closed by next hop', options.target)),
    );
  }

  get target(): string {
    return this.options.target;
  }

  get dead(): boolean {
    return this.#dead !== undefined;
  }

  /** Called once when the connection dies (used by the pool to drop it from its idle list). */
  onDead(cb: () => void): void {
    this.#onDead = cb;
  }

  /** Connects, reads the greeting and sends EHLO, all within connectTimeoutMs. */
  static async open(options: ConnectionOptions): Promise<RelayConnection> {
    const hp = parseHostPort(options.target);
    if (!hp) throw new RelayError('unavailable', 'not host:port', options.target);
    const deadline = setTimeout(() => socket.destroy(new Error('connect timeout')), options.connectTimeoutMs);
    const socket = net.connect({ host: hp.host, port: hp.port });
    const conn = new RelayConnection(options, socket);
    try {
      await new Promise<void>((resolve, reject) => {
        socket.once('connect', resolve);
        socket.once('error', (err) =>
          reject(
            new RelayError(
              /timeout/.test(err.message) ? 'timeout' : 'unavailable',
              err.message,
              options.target,
            ),
          ),
        );
        socket.once('close', () =>
          reject(new RelayError('unavailable', 'connection closed', options.target)),
        );
      });
      const greeting = await conn.expect(options.connectTimeoutMs);
      if (greeting.code !== 220) {
        throw new RelayError(
          'unavailable',
          `greeting: ${greeting.code} ${greeting.lines.join(' / ')}`,
          options.target,
        );
      }
      const ehlo = await conn.command(`EHLO ${options.ehloName}`, options.connectTimeoutMs);
      if (ehlo.code !== 250) {
        throw new RelayError('protocol', `EHLO: ${ehlo.code} ${ehlo.lines.join(' / ')}`, options.target);
      }
      conn.caps = parseCapabilities(ehlo.lines.slice(1));
      return conn;
    } catch (err) {
      conn.destroy();
      if (err instanceof RelayError) {
        // a connect timeout shows as "lost" from the socket's close: call it what it was
        if (err.kind === 'lost') throw new RelayError('unavailable', err.message, options.target);
        throw err;
      }
      throw new RelayError('unavailable', (err as Error).message, options.target);
    } finally {
      clearTimeout(deadline);
    }
  }

  /** Waits for the next reply without sending anything (greeting, end of DATA). */
  expect(timeoutMs = this.options.timeoutMs): Promise<Reply> {
    if (this.#dead) return Promise.reject(this.#dead);
    return new Promise<Reply>((resolve, reject) => {
      const waiter: Waiter = { resolve, reject, timer: undefined };
      waiter.timer = setTimeout(() => {
        this.#fail(new RelayError('timeout', `no reply within ${timeoutMs} ms`, this.target));
      }, timeoutMs);
      this.#waiters.push(waiter);
    });
  }

  command(line: string, timeoutMs = this.options.timeoutMs): Promise<Reply> {
    const p = this.expect(timeoutMs);
    this.#socket.write(line + '\r\n');
    return p;
  }

  /** Sends several commands in one write and collects their replies (only with PIPELINING). */
  pipeline(lines: string[], timeoutMs = this.options.timeoutMs): Promise<Reply>[] {
    const replies = lines.map(() => this.expect(timeoutMs));
    this.#socket.write(lines.join('\r\n') + '\r\n');
    for (const r of replies) r.catch(() => undefined); // rejections are seen by whoever awaits them
    return replies;
  }

  /**
   * Commands and then raw bytes (a BDAT chunk after its command) in one write; one reply per command.
   * `written` resolves when the socket can take more (see write).
   */
  pipelineWith(
    lines: string[],
    data: readonly Buffer[],
    timeoutMs = this.options.timeoutMs,
  ): { replies: Promise<Reply>[]; written: Promise<void> } {
    const replies = lines.map(() => this.expect(timeoutMs));
    for (const r of replies) r.catch(() => undefined);
    const written = this.write(Buffer.concat([Buffer.from(lines.join('\r\n') + '\r\n'), ...data]));
    return { replies, written };
  }

  /** Writes raw bytes, resolving when the socket can take more (backpressure), bounded by the timeout. */
  write(data: Buffer): Promise<void> {
    if (this.#dead) return Promise.reject(this.#dead);
    if (this.#socket.write(data)) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        cleanup();
        this.#fail(new RelayError('timeout', 'next hop stopped reading the message', this.target));
        reject(this.#dead);
      }, this.options.timeoutMs);
      const onDrain = () => {
        cleanup();
        resolve();
      };
      const onClose = () => {
        cleanup();
        reject(this.#dead ?? new RelayError('lost', 'connection closed', this.target));
      };
      const cleanup = () => {
        clearTimeout(timer);
        this.#socket.off('drain', onDrain);
        this.#socket.off('close', onClose);
      };
      this.#socket.once('drain', onDrain);
      this.#socket.once('close', onClose);
    });
  }

  /** QUIT politely (best effort) and close. */
  quit(): void {
    if (this.#dead) return;
    this.#dead = new RelayError('lost', 'closed by us', this.target);
    this.#socket.end('QUIT\r\n');
    setTimeout(() => this.#socket.destroy(), 1000).unref();
    this.#onDead?.();
  }

  /** Drops the connection at once (mid-DATA this aborts the transaction: no final dot is sent). */
  destroy(): void {
    this.#fail(new RelayError('lost', 'closed by us', this.target));
  }

  #onData(chunk: Buffer): void {
    let replies: Reply[];
    try {
      replies = this.#parser.push(chunk);
    } catch (err) {
      this.#fail(new RelayError('protocol', (err as Error).message, this.target));
      return;
    }
    for (const r of replies) {
      const w = this.#waiters.shift();
      if (!w) {
        // an unsolicited reply: normally 421 before the server closes an idle connection
        this.#fail(new RelayError('lost', `unsolicited reply ${r.code} ${r.lines.join(' / ')}`, this.target));
        return;
      }
      clearTimeout(w.timer);
      w.resolve(r);
      if (r.code === 421) {
        this.#fail(new RelayError('lost', `next hop closing: ${r.lines.join(' / ')}`, this.target));
        return;
      }
    }
  }

  #fail(err: RelayError): void {
    if (!this.#dead) {
      this.#dead = err;
      this.#onDead?.();
    }
    for (const w of this.#waiters.splice(0)) {
      clearTimeout(w.timer);
      w.reject(this.#dead);
    }
    if (!this.#socket.destroyed) this.#socket.destroy();
  }
}

export function parseCapabilities(lines: string[]): Capabilities {
  const caps: Capabilities = {
    pipelining: false,
    chunking: false,
    eightBitMime: false,
    smtpUtf8: false,
    dsn: false,
    size: undefined,
    xforward: new Set(),
  };
  for (const line of lines) {
    const text = line.replace(/^\d\.\d+\.\d+\s+/, '');
    const [kw = '', ...args] = text.trim().split(/\s+/);
    switch (kw.toUpperCase()) {
      case 'PIPELINING':
        caps.pipelining = true;
        break;
      case 'CHUNKING':
        caps.chunking = true;
        break;
      case '8BITMIME':
        caps.eightBitMime = true;
        break;
      case 'SMTPUTF8':
        caps.smtpUtf8 = true;
        break;
      case 'DSN':
        caps.dsn = true;
        break;
      case 'SIZE':
        caps.size = args[0] ? Number(args[0]) : undefined;
        break;
      case 'XFORWARD':
        caps.xforward = new Set(args.map((a) => a.toUpperCase()));
        break;
    }
  }
  return caps;
}
