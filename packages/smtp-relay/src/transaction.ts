/**
 * transaction: one message to the next hop, its envelope in one pipelined write: for a message already
 * spooled (filter, quarantine release), or while our own client is still sending its body (greylist,
 * which reserves the connection at its client's MAIL and streams the body as it arrives).
 *
 * Per transaction: XFORWARD (the original client), MAIL, RCPTs, DATA, pipelined where the server offers
 * PIPELINING; the body dot-stuffed and written in large chunks, the final dot in the same write as the
 * last chunk; the next hop's exact reply handed back; RSET after a refusal, a fresh connection after any
 * failure, and the connection destroyed (no final dot) when a transaction is aborted mid-DATA.
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

function mailCommand(from: Address, conn: RelayConnection): string {
  const args =
    from.args && typeof from.args === 'object' ? (from.args as Record<string, string | boolean>) : {};
  let line = `MAIL FROM:<${from.address}>`;
  if (conn.caps.eightBitMime && typeof args.BODY === 'string') line += ` BODY=${args.BODY.toUpperCase()}`;
  if (conn.caps.smtpUtf8 && args.SMTPUTF8) line += ' SMTPUTF8';
  if (conn.caps.dsn && typeof args.RET === 'string') line += ` RET=${args.RET}`;
  if (conn.caps.dsn && typeof args.ENVID === 'string') line += ` ENVID=${args.ENVID}`;
  return line;
}

function rcptCommand(to: Address, conn: RelayConnection): string {
  const args = to.args && typeof to.args === 'object' ? (to.args as Record<string, string | boolean>) : {};
  let line = `RCPT TO:<${to.address}>`;
  if (conn.caps.dsn && typeof args.NOTIFY === 'string') line += ` NOTIFY=${args.NOTIFY}`;
  if (conn.caps.dsn && typeof args.ORCPT === 'string') line += ` ORCPT=${args.ORCPT}`;
  return line;
}

type State = 'open' | 'mail' | 'data' | 'done';

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
   * one, its first refusal is returned; if it refuses some but not all, the transaction is aborted and
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
    for (let attempt = 0; ; attempt++) {
      const { conn, reused } = attempt === 0 && reserved ? reserved : await pool.acquire(attempt > 0);
      const tx = new RelayTransaction(pool, conn, pool.options.logger);
      try {
        return await tx.#sendAll(client, envelope, body, prefix);
      } catch (err) {
        conn.destroy();
        if (
          reused &&
          attempt === 0 &&
          err instanceof RelayError &&
          err.kind === 'lost' &&
          tx.#state !== 'data'
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
    prefix?: Buffer,
  ): Promise<Reply> {
    const conn = this.conn;
    const head = [
      ...xforwardCommands(client, conn.caps.xforward),
      mailCommand(envelope.mailFrom, conn),
      ...envelope.rcptTo.map((r) => rcptCommand(r, conn)),
    ];
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
    const nx = head.length - envelope.rcptTo.length - 1;
    for (const r of replies.slice(0, nx)) {
      if (r.code !== 250)
        throw new RelayError('protocol', `XFORWARD refused: ${r.code} ${r.lines.join(' / ')}`, conn.target);
    }
    const mail = replies[nx]!;
    const rcpts = replies.slice(nx + 1);
    this.#state = 'mail';
    if (mail.code >= 300) {
      if (go.code === 354) return this.#abortData(mail);
      this.#finish(true);
      return mail;
    }
    const refused = rcpts.filter((r) => r.code >= 300);
    if (refused.length) {
      const answer = refused.length === rcpts.length ? refused[0]! : relayReplies.mixed();
      if (refused.length < rcpts.length) {
        this.logger.warn(
          { next: conn.target, refused: refused.map((r) => `${r.code} ${r.lines[0]}`) },
          'next hop refused some recipients',
        );
      }
      if (go.code === 354) return this.#abortData(answer);
      this.#finish(true);
      return answer;
    }
    if (go.code !== 354) {
      this.#finish(true);
      return go;
    }
    return this.#body(body(), prefix);
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
