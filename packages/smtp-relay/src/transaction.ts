/**
 * transaction: one message to the next hop, its envelope in one pipelined write: for a message already
 * spooled (filter, quarantine release), or while our own client is still sending its body (greylist,
 * which reserves the connection at its client's MAIL and streams the body as it arrives).
 *
 * Per transaction: XFORWARD (the original client), MAIL, RCPTs, DATA, pipelined where the server offers
 * PIPELINING; the body dot-stuffed and written in large chunks, the final dot in the same write as the
 * last chunk; the next hop's exact reply handed back; RSET after a refusal, a fresh connection after any
 * failure, and the connection destroyed (no final dot) when a transaction is aborted mid-DATA.
 *
 * Where the next hop offers CHUNKING and PIPELINING (our own lean listener), BDAT instead of DATA
 * (#sendChunked): no 354 to wait for, so a small message with one recipient is one write and one read.
 * The same rules hold: the connection is destroyed, without a last chunk, when a transaction is
 * aborted, and a next hop refusing some recipients never gets the last chunk.
 */
import type { Readable } from 'node:stream';
import type { Logger } from '@moat/log';
import type { Address, ClientInfo, Reply } from '@moat/smtp-listener';
import { type RelayConnection, RelayError } from './connection.js';
import { DotStuffer } from './dot-stuff.js';
import type { RelayPool } from './pool.js';
import { relayReplies } from './replies.js';
import { xforwardCommands } from './xforward.js';

export interface Envelope {
  mailFrom: Address;
  rcptTo: readonly Address[];
}

/**
 * An ESMTP parameter value as it goes on the wire: xtext (RFC 3461), every "+" and "=" and every byte
 * outside 0x21-0x7e escaped. Both engines hand their handlers decoded values, so "ENVID=x+20SIZE=9"
 * arrives as "x SIZE=9": written back as it was, that is a second parameter the client smuggled into
 * our command to the next hop (there "SIZE=9..." got the whole message refused with 552). Encoding is
 * one-to-one: a decoded "+0D" is data, and leaving it unescaped would make the next hop read a CR.
 */
function xtextValue(value: string): string {
  let out = '';
  for (const b of Buffer.from(value, 'utf8')) {
    const escape = b < 0x21 || b > 0x7e || b === 0x3d || b === 0x2b;
    out += escape ? `+${b.toString(16).toUpperCase().padStart(2, '0')}` : String.fromCharCode(b);
  }
  return out;
}

/** Keyword parameters go on only with a value their RFC allows; anything else is left out. */
const KEYWORDS = {
  BODY: /^(?:7BIT|8BITMIME|BINARYMIME)$/i,
  RET: /^(?:FULL|HDRS)$/i,
  NOTIFY: /^(?:NEVER|(?:SUCCESS|FAILURE|DELAY)(?:,(?:SUCCESS|FAILURE|DELAY))*)$/i,
} as const;

function keyword(name: keyof typeof KEYWORDS, value: string | boolean | undefined): string {
  return typeof value === 'string' && KEYWORDS[name].test(value) ? ` ${name}=${value.toUpperCase()}` : '';
}

function mailCommand(from: Address, conn: RelayConnection): string {
  const args =
    from.args && typeof from.args === 'object' ? (from.args as Record<string, string | boolean>) : {};
  let line = `MAIL FROM:<${from.address}>`;
  if (conn.caps.eightBitMime) line += keyword('BODY', args.BODY);
  if (conn.caps.smtpUtf8 && args.SMTPUTF8) line += ' SMTPUTF8';
  if (conn.caps.dsn) line += keyword('RET', args.RET);
  if (conn.caps.dsn && typeof args.ENVID === 'string' && args.ENVID)
    line += ` ENVID=${xtextValue(args.ENVID)}`;
  return line;
}

function rcptCommand(to: Address, conn: RelayConnection): string {
  const args = to.args && typeof to.args === 'object' ? (to.args as Record<string, string | boolean>) : {};
  let line = `RCPT TO:<${to.address}>`;
  if (conn.caps.dsn) line += keyword('NOTIFY', args.NOTIFY);
  if (conn.caps.dsn && typeof args.ORCPT === 'string' && args.ORCPT)
    line += ` ORCPT=${xtextValue(args.ORCPT)}`;
  return line;
}

type State = 'open' | 'mail' | 'data' | 'done';

/** A BDAT chunk is sent once this much of the body is at hand (or the body ended). */
const CHUNK_BYTES = 64 * 1024;
const CR = 0x0d;
const LF = 0x0a;
const CRLF = Buffer.from('\r\n');

/**
 * The body as BDAT chunks. The first chunk stays at hand until the next hop has answered it, so a
 * transaction on a pooled connection that turns out to be gone can be sent again on a fresh one
 * (the body stream itself cannot be read twice).
 */
class ChunkSource {
  readonly #it: AsyncIterator<Buffer>;
  #parts: Buffer[] = [];
  #size = 0;
  #total = 0;
  #lastByte = LF;
  ended = false;
  /** The first chunk, kept for a second attempt until its replies came. */
  first: { parts: Buffer[]; last: boolean } | undefined;

  constructor(body: Readable | AsyncIterable<Buffer>, prefix: Buffer | undefined) {
    this.#it = (body as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
    if (prefix?.length) this.#add(prefix);
  }

  #add(b: Buffer): void {
    this.#parts.push(b);
    this.#size += b.length;
    this.#total += b.length;
    this.#lastByte = b[b.length - 1]!;
  }

  /** The next chunk: CHUNK_BYTES, or what is left once the body ended (with a final CRLF if it lacks one). */
  async next(): Promise<Buffer[]> {
    while (!this.ended && this.#size < CHUNK_BYTES) {
      const r = await this.#it.next();
      if (r.done) this.ended = true;
      else if (r.value.length) this.#add(r.value);
    }
    // as DATA's end does: the message ends with a line ending
    if (this.ended && this.#total && this.#lastByte !== LF && this.#lastByte !== CR) this.#add(CRLF);
    const parts = this.#parts;
    this.#parts = [];
    this.#size = 0;
    return parts;
  }

  /** The whole message again, prefix included: the first chunk kept, then the rest of the body (DATA). */
  async *replay(): AsyncGenerator<Buffer> {
    yield* this.first?.parts ?? [];
    for (let r = await this.#it.next(); !r.done; r = await this.#it.next()) yield r.value;
  }
}

const bdat = (parts: readonly Buffer[], last: boolean) =>
  `BDAT ${parts.reduce((n, b) => n + b.length, 0)}${last ? ' LAST' : ''}`;

/**
 * A pooled connection held for a transaction whose commands all go at DATA (greylist): taking it at
 * MAIL tells the client at once when the next hop is down, and costs no command.
 */
export interface Reservation {
  readonly conn: RelayConnection;
  readonly reused: boolean;
}

export class RelayTransaction {
  #state: State = 'open';
  /** BDAT: sent the first chunk only, its replies not yet in: the transaction can go again elsewhere. */
  #firstChunkOnly = false;

  private constructor(
    readonly pool: RelayPool,
    private conn: RelayConnection,
    private readonly logger: Logger,
  ) {}

  get target(): string {
    return this.conn.target;
  }

  async #body(body: Readable | AsyncIterable<Buffer>, prefix?: Buffer): Promise<Reply> {
    this.#state = 'data';
    const stuffer = new DotStuffer();
    let held: Buffer | undefined = prefix && prefix.length ? stuffer.stuff(prefix) : undefined;
    try {
      for await (const chunk of body as AsyncIterable<Buffer>) {
        if (!chunk.length) continue;
        const stuffed = stuffer.stuff(chunk);
        if (held) {
          // small chunks are merged: fewer, larger writes
          if (held.length < 16 * 1024) {
            held = Buffer.concat([held, stuffed]);
            continue;
          }
          await this.conn.write(held);
        }
        held = stuffed;
      }
    } catch (err) {
      if (err instanceof RelayError) {
        this.#finish(false);
        throw err;
      }
      // the body failed on our side: abort without the final dot
      this.#abort('body failed');
      throw err;
    }
    const end = stuffer.terminator();
    try {
      const final = this.conn.expect();
      await this.conn.write(held ? Buffer.concat([held, end]) : end);
      const r = await final;
      this.#finish(r.code !== 421);
      return r;
    } catch (err) {
      this.#finish(false);
      throw err;
    }
  }

  /** Takes a connection for a later send() (see Reservation). Throws RelayError when none can be had. */
  static reserve(pool: RelayPool): Promise<Reservation> {
    return pool.acquire();
  }

  /** Gives back a reservation that was not used (the transaction ended before DATA). */
  static unreserve(pool: RelayPool, r: Reservation): void {
    pool.release(r.conn);
  }

  /**
   * Sends a whole message in one go: XFORWARD, MAIL, RCPTs, DATA pipelined, then the body (`body()`
   * is only called after the 354). One reply must cover all recipients: if the next hop refuses every
   * one, its first refusal is returned (its first temporary one, if any was temporary); if it refuses some but not all, the transaction is aborted and
   * 451 4.3.0 returned, so the client retries all of them and nobody gets the message twice.
   * `reserved` is used first when given (a stale one is replaced once by a fresh connection).
   */
  static async send(
    pool: RelayPool,
    client: ClientInfo,
    envelope: Envelope,
    body: () => Readable | AsyncIterable<Buffer>,
    prefix?: Buffer,
    reserved?: Reservation,
  ): Promise<Reply> {
    let chunks: ChunkSource | undefined;
    const source = () => (chunks ??= new ChunkSource(body(), prefix));
    for (let attempt = 0; ; attempt++) {
      const { conn, reused } = attempt === 0 && reserved ? reserved : await pool.acquire(attempt > 0);
      // a reservation waited for our client's RCPT and DATA: it may have gone stale like a pooled one
      const stale = reused || (attempt === 0 && reserved !== undefined);
      const tx = new RelayTransaction(pool, conn, pool.options.logger);
      // a retry after a first chunk goes on from what was read (prefix included), also over DATA
      const read = chunks;
      try {
        return await tx.#sendAll(
          client,
          envelope,
          read ? () => read.replay() : body,
          read ? undefined : prefix,
          source,
        );
      } catch (err) {
        conn.destroy();
        // a pooled connection that was gone: once more on a fresh one, if nothing of the body is lost.
        // With BDAT that includes a first chunk still unanswered: a next hop that closed the connection
        // never read it (one that took it and then died before answering is SMTP's old window for a
        // duplicate, which a 451 to our client would open just the same)
        if (
          stale &&
          attempt === 0 &&
          err instanceof RelayError &&
          err.kind === 'lost' &&
          (tx.#state !== 'data' || tx.#firstChunkOnly)
        )
          continue;
        throw err;
      }
    }
  }

  async #sendAll(
    client: ClientInfo,
    envelope: Envelope,
    body: () => Readable | AsyncIterable<Buffer>,
    prefix: Buffer | undefined,
    chunks: () => ChunkSource,
  ): Promise<Reply> {
    const conn = this.conn;
    const head = [
      ...xforwardCommands(client, conn.caps.xforward),
      mailCommand(envelope.mailFrom, conn),
      ...envelope.rcptTo.map((r) => rcptCommand(r, conn)),
    ];
    const nx = head.length - envelope.rcptTo.length - 1;
    if (conn.caps.chunking && conn.caps.pipelining) return this.#sendChunked(head, nx, chunks());
    let replies: Reply[];
    let go: Reply;
    if (conn.caps.pipelining) {
      const pending = conn.pipeline([...head, 'DATA']);
      const all = await Promise.all(pending);
      go = all.pop()!;
      replies = all;
    } else {
      replies = [];
      for (const line of head) {
        const r = await conn.command(line);
        replies.push(r);
        if (r.code >= 300 && replies.length <= head.length - envelope.rcptTo.length) break;
      }
      go = replies.every((r) => r.code < 300)
        ? await conn.command('DATA')
        : { code: 503, lines: ['5.5.1 not sent'] };
    }
    this.#state = 'mail';
    const refusal = this.#refusal(replies, nx);
    if (refusal) {
      if (go.code === 354) return this.#abortData(refusal);
      this.#finish(true);
      return refusal;
    }
    if (go.code !== 354) {
      this.#finish(true);
      return go;
    }
    return this.#body(body(), prefix);
  }

  /**
   * The envelope's replies (XFORWARD..., MAIL, RCPT...): the refusal to give our client, or undefined
   * when all were accepted. If the next hop refuses every recipient, its first refusal (the first 4xx
   * if any was a 4xx); if some but not
   * all, 451 4.3.0 (one reply must cover all). A refused XFORWARD is a protocol error.
   */
  #refusal(replies: readonly Reply[], nx: number): Reply | undefined {
    for (const r of replies.slice(0, nx)) {
      if (r.code !== 250)
        throw new RelayError('protocol', `XFORWARD refused: ${r.code} ${r.lines.join(' / ')}`, this.target);
    }
    const mail = replies[nx]!;
    if (mail.code >= 300) return mail;
    const rcpts = replies.slice(nx + 1);
    const refused = rcpts.filter((r) => r.code >= 300);
    if (!refused.length) return undefined;
    // every one refused: the first refusal, but a temporary one if any was (a 5xx would bounce the
    // recipient whose refusal was only for now)
    if (refused.length === rcpts.length) return refused.find((r) => r.code < 500) ?? refused[0]!;
    this.logger.warn(
      { next: this.target, refused: refused.map((r) => `${r.code} ${r.lines[0]}`) },
      'next hop refused some recipients',
    );
    return relayReplies.mixed();
  }

  /**
   * With CHUNKING (RFC 3030): the envelope and the first BDAT chunk in one write. A message that fits
   * one chunk and has one recipient goes as BDAT LAST at once: one write and one read per message
   * (the next hop holds its replies until the last). With several recipients the LAST waits for the
   * envelope's replies, so that a next hop refusing some of them never gets the message for the others.
   * Later chunks go without waiting for their replies, but the last one waits for the earlier ones: a
   * refused chunk ends the transaction without a last chunk (RFC 3030, 4.2).
   */
  async #sendChunked(head: string[], nx: number, source: ChunkSource): Promise<Reply> {
    const conn = this.conn;
    let parts: Buffer[];
    try {
      parts = source.first?.parts ?? (await source.next());
    } catch (err) {
      this.#abort('body failed');
      throw err;
    }
    // one recipient: the head is the XFORWARDs, MAIL and one RCPT
    const single = nx + 2 === head.length;
    const last = source.first?.last ?? (source.ended && single);
    source.first = { parts, last };
    this.#state = 'data';
    this.#firstChunkOnly = true;
    const first = conn.pipelineWith([...head, bdat(parts, last)], parts);
    await first.written;
    const replies = await Promise.all(first.replies);
    this.#firstChunkOnly = false;
    source.first = undefined;
    const chunkReply = replies.pop()!;
    const refusal = this.#refusal(replies, nx);
    if (refusal) {
      // with no recipient the chunk was refused too, and the server has at most MAIL to reset;
      // otherwise it holds a chunk for some recipients: the connection goes
      if (last) {
        this.#state = 'mail';
        this.#finish(true);
      } else this.#abort('refused before the last chunk');
      return refusal;
    }
    if (last || chunkReply.code >= 400) {
      this.#finish(last && chunkReply.code !== 421);
      return chunkReply;
    }
    const pending: Promise<Reply>[] = [];
    let refused: Reply | undefined;
    for (let sent = false; !sent;) {
      try {
        parts = await source.next();
      } catch (err) {
        // the body failed on our side: the next hop never gets a last chunk
        this.#abort('body failed');
        throw err;
      }
      sent = source.ended;
      // a chunk refused (RFC 3030: no more BDAT after a 4xx or 5xx): the next hop never gets the last
      // one. Before the last, every earlier chunk's reply is awaited (they are in by then as a rule,
      // since each is answered at once); before the others, those already in are looked at
      if (sent) refused = (await Promise.all(pending)).find((r) => r.code >= 400);
      if (refused) {
        this.#abort('a chunk was refused');
        return refused;
      }
      const w = conn.pipelineWith([bdat(parts, sent)], parts);
      for (const r of w.replies) {
        pending.push(r);
        void r.then((reply) => (refused ??= reply.code >= 400 ? reply : undefined)).catch(() => undefined);
      }
      await w.written;
    }
    const all = await Promise.all(pending);
    const final = all.pop()!;
    const failed = all.find((r) => r.code >= 400);
    this.#finish(!failed && final.code !== 421);
    return failed ?? final;
  }

  /** The server said 354 although we no longer want to send: drop the connection, no final dot. */
  #abortData(answer: Reply): Reply {
    this.#state = 'data';
    this.#abort('refused before DATA');
    return answer;
  }

  /**
   * Abandons the transaction. Before DATA: RSET, then the connection goes back to the pool. During DATA:
   * the connection is destroyed, so the next hop discards what it received.
   */
  #abort(why: string): void {
    if (this.#state === 'done') return;
    const conn = this.conn;
    if (this.#state === 'data') {
      this.logger.debug({ next: conn.target, why }, 'aborting downstream transaction');
      this.#state = 'done';
      conn.destroy();
      return;
    }
    this.#state = 'done';
    conn
      .command('RSET')
      .then((r) => (r.code === 250 ? this.pool.release(conn) : conn.destroy()))
      .catch(() => conn.destroy());
  }

  /** Ends the transaction, returning the connection to the pool when it is in a clean state. */
  #finish(reusable: boolean): void {
    const was = this.#state;
    this.#state = 'done';
    if (!reusable || this.conn.dead) {
      this.conn.destroy();
      return;
    }
    if (was === 'open' || was === 'mail') {
      // a refusal left a half transaction: RSET before reuse
      const conn = this.conn;
      conn
        .command('RSET')
        .then((r) => (r.code === 250 ? this.pool.release(conn) : conn.destroy()))
        .catch(() => conn.destroy());
      return;
    }
    this.pool.release(this.conn);
  }
}
