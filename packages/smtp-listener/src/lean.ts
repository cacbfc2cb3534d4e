/**
 * lean: Moat's own SMTP server for the hops between its own services (filter on 10024, delivery on
 * 10025, quarantine on 10026), in place of smtp-server there. The public MX (greylist) stays on
 * smtp-server, which brings STARTTLS, PROXY and the tolerance a port open to the world needs.
 *
 * Why write one (smtp-server falls short here): on this kind of machine every system call and every
 * stream layer costs several times what it costs elsewhere, and smtp-server spends a fixed amount of
 * JavaScript per command and per message on top of the system calls (a stream pipe into its command
 * parser, a data stream per message, address parsing through punycode, log objects built for a
 * disabled logger, a random session id per connection). Measured with smtp-source against each engine
 * behind the same handlers (the body read to its end, 250), 1 KB, 10 sessions, three alternating runs:
 *   - many messages per connection (how the hops talk, over pooled connections): 0.11-0.16 ms of CPU
 *     per message here, 0.18-0.26 ms with smtp-server;
 *   - one message per connection: 0.32-0.51 ms here, 0.47-0.72 ms with smtp-server.
 * In the chain (goal row, four alternating runs, each service's CPU against screen's, which did not
 * change) filter spent about 15% less CPU per message and delivery about 9% less.
 *
 * What it speaks is the subset our own relay client (and Postfix's smtp client, amavisd-new's
 * reinjection, swaks) use: EHLO/HELO, XFORWARD (from peers only), MAIL with SIZE/BODY/SMTPUTF8 and DSN
 * parameters, RCPT, DATA, RSET, NOOP, VRFY, HELP, QUIT, with PIPELINING. Replies are word for word
 * those of smtp-server as our listener sent them, so the engines are interchangeable; the listener
 * tests run against both. No STARTTLS, no AUTH, no PROXY: an internal port is limited to its peers.
 *
 * It also offers CHUNKING (RFC 3030 BDAT, which smtp-server lacks), which our relay client uses between
 * our own hops: the envelope, "BDAT n LAST" and the message go in one write, and the replies to all of
 * them are held until the handler's final one, so a message costs each side one write and one read
 * instead of two (with DATA the client must wait for the 354). Measured in the chain (goal row, two
 * alternating pairs): about 5% more messages per second and about 7% less CPU in filter. A chunk's bytes
 * are always read to their count, also when the BDAT is refused, so they are never taken as commands;
 * a count that cannot be read ends the session. The line-ending rule applies to chunks as to DATA, and
 * a message not ending in a line ending gets a CRLF, as the end of DATA gives it one.
 *
 * DATA follows the same rules as smtp-server: it ends only on CRLF.CRLF, a dot at the start of any
 * line is removed (dot-unstuffing), and then the one line-ending rule (line-endings.ts) applies.
 */
import net from 'node:net';
import { Readable } from 'node:stream';
import { NetworkList, parseHostPort } from '@moat/config';
import type { Logger } from '@moat/log';
import { LineEndings, MessageTooBig } from './line-endings.js';
import type { Address, DataInfo, HopSession, Listener, ListenerOptions, Transaction } from './listener.js';
import { type ClientInfo, forwardedClient, newQueueId, UNAVAILABLE } from './received.js';
import { formatReply, guarded, listenerReplies, type Reply } from './replies.js';

const LF = 0x0a;
const CR = 0x0d;
const DOT = 0x2e;
const CRLF = Buffer.from('\r\n');
/** A command line longer than this is refused (RFC 5321 asks for 512; parameters make more). */
const MAX_LINE = 4096;
/** Input held while a command waits for its handler, before the socket is paused. */
const MAX_PENDING = 256 * 1024;
const MAX_UNRECOGNIZED = 10;
/** Commands allowed between BDAT chunks; all but BDAT and NOOP end the transaction. */
const BETWEEN_CHUNKS = new Set(['BDAT', 'RSET', 'QUIT', 'NOOP', 'EHLO', 'HELO']);
const XFORWARD_KEYS = new Set(['NAME', 'ADDR', 'PORT', 'PROTO', 'HELO', 'IDENT', 'SOURCE']);
// eslint-disable-next-line no-control-regex
const CONTROL = /[\x00-\x1f\x7f]/;
const LABEL = /^[a-z0-9](?:[a-z0-9_-]*[a-z0-9])?$/i;
const ADDRESS_LITERAL = /^\[(?:ipv6:)?[0-9a-f:.]+\]$/i;

/**
 * A host name (labels joined by dots, a trailing dot allowed) or an address literal, checked label by
 * label in linear time. The single pattern it replaces, /^(?:label\.?)+$/, backtracked exponentially
 * on a long run of letters that ends badly: "EHLO " + 31 letters + "!" held the process (every session
 * of the hop) for 13 seconds, a few letters more for hours.
 */
function isHostname(value: string): boolean {
  if (ADDRESS_LITERAL.test(value)) return true;
  return (value.endsWith('.') ? value.slice(0, -1) : value).split('.').every((label) => LABEL.test(label));
}

/** Fixed replies, as smtp-server (with enhanced status codes) words them. */
const R = {
  ok: '250 2.0.0 OK',
  flushed: '250 2.0.0 Flushed',
  bye: '221 2.0.0 Bye',
  mailOk: '250 2.1.0 Accepted',
  rcptOk: '250 2.1.5 Accepted',
  goAhead: '354 End data with <CR><LF>.<CR><LF>',
  help: '214 2.0.0 See https://tools.ietf.org/html/rfc5321 for details',
  vrfy: '252 2.1.5 Try to send something. No promises though',
  vrfySyntax: '501 5.5.4 Error: Syntax: VRFY address',
  ehloSyntax: '501 Error: syntax: EHLO hostname',
  heloSyntax: '501 Error: Syntax: HELO hostname',
  badHostname: '501 Error: Bad hostname syntax',
  heloFirst: '503 5.5.1 Error: send HELO/EHLO first',
  nestedMail: '503 5.5.1 Error: nested MAIL command',
  needMail: '503 5.5.1 Error: need MAIL command',
  needRcpt: '503 5.5.1 Error: need RCPT command',
  inTransaction: '503 5.5.1 Error: Mail transaction in progress',
  badSender: '501 5.1.7 Error: Bad sender address syntax',
  badRecipient: '501 5.1.3 Error: Bad recipient address syntax',
  badParameter: '501 5.5.4 Error: Bad command parameter syntax',
  notAllowed: '550 5.7.0 Error: Not allowed',
  tooManyRecipients: '452 4.5.3 Error: too many recipients',
  unrecognized: '500 5.5.2 Error: command not recognized',
  tooManyUnrecognized: '421 4.4.2 Error: too many unrecognized commands',
  lineTooLong: '500 5.5.2 Error: line too long',
  timeout: '421 4.4.2 Timeout - closing connection',
  bdatSyntax: '501 5.5.4 Error: Syntax: BDAT count [LAST]',
  inChunking: '503 5.5.1 Error: BDAT transaction in progress',
  chunkOk: (bytes: number) => `250 2.0.0 OK: ${bytes} octets received`,
  tooBigForSize: (limit: number) => `552 5.3.4 Error: message exceeds fixed maximum message size ${limit}`,
} as const;

/** The body handed to the data handler; reading it resumes the socket that backpressure paused. */
class Body extends Readable {
  constructor(private readonly wanted: () => void) {
    super({ highWaterMark: 64 * 1024 });
  }
  override _read(): void {
    this.wanted();
  }
}

interface DataPhase {
  /** Sent with BDAT chunks (RFC 3030): no dot-unstuffing, and commands come between the chunks. */
  chunked: boolean;
  body: Body;
  rule: LineEndings;
  bytes: number;
  /** The last byte taken (BDAT: a body not ending in a line ending gets a CRLF, as DATA's end gives). */
  lastByte: number;
  tooBig: boolean;
  /** At the start of a line: a dot there is removed, or ends the data after a CRLF. */
  lineStart: boolean;
  /** The line before ended with CRLF (so "." CRLF here ends the data). */
  prevCrlf: boolean;
  /** The last byte taken was a CR (for a CRLF split across reads). */
  lastCr: boolean;
  /** CRLF.CRLF seen. */
  ended: boolean;
  /** The handler's reply, once it settled. */
  reply: Reply | undefined;
}

/** A BDAT chunk being read: its bytes are taken as they come, even when the command was refused. */
interface Chunk {
  size: number;
  remaining: number;
  last: boolean;
  /** The command was refused: the bytes are read and dropped, then this is the reply. */
  refused: string | undefined;
}

/** Parses "FROM:<a@b> K=V K2" (or "TO:..."): the address and its parameters, or undefined. */
export function parsePath(arg: string, prefix: 'FROM' | 'TO'): Address | undefined {
  const colon = arg.indexOf(':');
  if (colon === -1 || arg.slice(0, colon).trim().toUpperCase() !== prefix) return undefined;
  const rest = arg.slice(colon + 1).trimStart();
  let address: string;
  let tail: string;
  if (rest.startsWith('<')) {
    let i = 1;
    let quoted = false;
    for (; i < rest.length; i++) {
      const c = rest[i];
      if (c === '\\' && quoted) i++;
      else if (c === '"') quoted = !quoted;
      else if (c === '>' && !quoted) break;
    }
    if (i >= rest.length) return undefined;
    address = rest.slice(1, i);
    tail = rest.slice(i + 1);
    if (tail && !/^\s/.test(tail)) return undefined;
  } else {
    const sp = rest.search(/\s/);
    address = sp === -1 ? rest : rest.slice(0, sp);
    tail = sp === -1 ? '' : rest.slice(sp);
    if (/[<>]/.test(address)) return undefined;
  }
  // a source route (@a,@b:user@c) is kept as given; the hop before us already judged the address
  if (CONTROL.test(address) || (address === '' && prefix === 'TO')) return undefined;
  const params = tail.trim();
  if (!params) return { address, args: false };
  const args: Record<string, string | boolean> = {};
  for (const part of params.split(/\s+/)) {
    const eq = part.indexOf('=');
    const key = (eq === -1 ? part : part.slice(0, eq)).toUpperCase();
    if (!/^[A-Z0-9][A-Z0-9-]*$/.test(key)) return undefined;
    if (eq === -1) {
      args[key] = true;
      continue;
    }
    // values decoded from xtext, as smtp-server hands them on (the relay client encodes them again), and
    // refused when that makes a control character, as smtp-server does (ENVID=ab+0D+0Acd)
    const value = decodeXtext(part.slice(eq + 1));
    if (CONTROL.test(value)) return undefined;
    args[key] = value;
  }
  return { address, args: args as Address['args'] };
}

/**
 * xtext (RFC 3461) to text: the `+XX` escapes are bytes, and the bytes are UTF-8 (our relay client
 * encodes a value's UTF-8 bytes, as Postfix does). Taking each escape as a character of its own turned
 * a HELO like "bücher.test" into "bÃ¼cher.test" at each hop, C1 control characters included.
 */
function decodeXtext(v: string): string {
  if (!v.includes('+')) return v;
  const bytes: Buffer[] = [];
  let from = 0;
  for (const m of v.matchAll(/\+([0-9A-F]{2})/gi)) {
    bytes.push(Buffer.from(v.slice(from, m.index), 'utf8'), Buffer.from([parseInt(m[1]!, 16)]));
    from = m.index + m[0].length;
  }
  bytes.push(Buffer.from(v.slice(from), 'utf8'));
  return Buffer.concat(bytes).toString('utf8');
}

/** Flushes every connection that wrote this turn: the replies of one turn leave in one write. */
let toFlush: LeanConnection[] = [];
function flushTurn(): void {
  const list = toFlush;
  toFlush = [];
  for (const c of list) c.flush();
}

/** Numbers the sessions of this process, for their ids. */
let sessions = 0;

class LeanConnection {
  readonly session: HopSession;
  readonly #id = `lean${(++sessions).toString(36)}`;
  #out = '';
  #flushQueued = false;
  /**
   * Replies are held while a BDAT LAST waits for its handler: the replies to a pipelined envelope and
   * the final one leave in one write (RFC 2920 lets a server hold replies while it is not waiting for
   * input), so the sending hop reads once per message.
   */
  #hold = false;
  #endAfterFlush = false;
  #pending: Buffer | undefined;
  /** A command waits for its handler (or the data phase for its reply): input stays pending. */
  #busy = false;
  #paused = false;
  /** The body stream is full: the socket stays paused until its reader wants more. */
  #bodyFull = false;
  /** Our replies wait in the socket's buffer (the client does not read them): no reading until it drains. */
  #outFull = false;
  #closed = false;
  #skipLine = false;
  #helo = '';
  #proto = 'SMTP';
  #unrecognized = 0;
  readonly #xforward = new Map<string, string | false>();
  #tx: Transaction | undefined;
  #data: DataPhase | undefined;
  #chunk: Chunk | undefined;
  /** The server is stopping: answer 421 at the next command, or now when idle. */
  #stopping = false;

  constructor(
    readonly server: LeanServer,
    readonly socket: net.Socket,
  ) {
    const peer = { address: socket.remoteAddress ?? '', port: socket.remotePort ?? 0 };
    const isClosed = () => this.#closed || socket.destroyed;
    this.session = {
      connectionId: this.#id,
      peer,
      secure: false,
      get closed() {
        return isClosed();
      },
      client: () => this.client(),
    };
    socket.setNoDelay(true);
    socket.setTimeout(server.o.idleTimeoutMs ?? 300_000);
    // idle too long: 421; still there an idle period after that (it never closed its side): gone
    socket.on('timeout', () => (this.#closed ? socket.destroy() : this.#fail(R.timeout)));
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    socket.on('drain', () => {
      if (!this.#outFull) return;
      this.#outFull = false;
      this.#updatePause();
    });
    socket.on('error', (err) => server.o.logger.debug({ err: err.message }, 'connection error'));
    socket.on('close', () => this.#onClose());
  }

  async start(): Promise<void> {
    const h = this.server.o.handlers;
    if (h.connect) {
      this.#busy = true;
      const r = await guarded(this.server.o.logger, 'connect', () => h.connect!(this.session));
      this.#busy = false;
      if (r && r.code >= 400) return this.#fail(formatReply(r));
    }
    this.#send(`220 ${this.server.o.hostname} ESMTP`);
    this.#process();
  }

  client(): ClientInfo {
    const peer = this.session.peer;
    return forwardedClient(this.#xforward, { ...peer, helo: this.#helo, proto: this.#proto });
  }

  get idle(): boolean {
    return !this.#busy && !this.#tx && !this.#data;
  }

  /** The server stops: an idle session is answered 421 now, a busy one after its current reply. */
  stop(): void {
    this.#stopping = true;
    if (this.idle) this.#fail(formatReply(listenerReplies.shuttingDown()));
  }

  /** closeTimeoutMs ran out: 421 now (unless it is gone), then the socket goes. */
  destroy(): void {
    if (!this.#closed) this.#fail(formatReply(listenerReplies.shuttingDown()));
    this.flush();
    setTimeout(() => this.socket.destroy(), 1000).unref();
  }

  // --- output ---

  #send(line: string): void {
    if (this.#closed) return;
    if (!this.#flushQueued) {
      this.#flushQueued = true;
      if (toFlush.push(this) === 1) setImmediate(flushTurn);
    }
    this.#out += line + '\r\n';
  }

  flush(): void {
    this.#flushQueued = false;
    if (this.#hold) return;
    const out = this.#out;
    this.#out = '';
    if (this.socket.destroyed) return;
    if (this.#endAfterFlush) this.socket.end(out);
    else if (out && !this.socket.write(out) && this.socket.writableLength > MAX_PENDING) {
      // a client that pipelines commands and never reads the replies: stop reading its commands, or
      // the replies would pile up in memory without bound
      this.#outFull = true;
      this.#updatePause();
    }
  }

  /** A last reply, then the connection ends (after this turn's replies). */
  #fail(line: string): void {
    if (this.#closed) return;
    this.#hold = false;
    this.#send(line);
    this.#endAfterFlush = true;
    this.#closed = true;
    this.#abortData(new Error('connection closed by the server'));
    this.#reset('disconnect');
  }

  // --- input ---

  #onData(chunk: Buffer): void {
    if (this.#closed) return;
    this.#pending = this.#pending ? Buffer.concat([this.#pending, chunk]) : chunk;
    this.#process();
  }

  #process(): void {
    while (this.#pending && !this.#busy && !this.#closed) {
      if (this.#chunk) {
        if (!this.#takeChunk()) break;
        continue;
      }
      if (this.#data && !this.#data.chunked) {
        if (!this.#takeData()) break;
        continue;
      }
      const buf: Buffer = this.#pending;
      const nl = buf.indexOf(LF);
      if (nl === -1) {
        if (buf.length > MAX_LINE) {
          this.#pending = undefined;
          if (!this.#skipLine) this.#send(R.lineTooLong);
          this.#skipLine = true;
        }
        break;
      }
      const end = nl > 0 && buf[nl - 1] === CR ? nl - 1 : nl;
      const line = buf.toString('utf8', 0, end);
      this.#pending = nl + 1 < buf.length ? buf.subarray(nl + 1) : undefined;
      if (this.#skipLine) {
        this.#skipLine = false;
        continue;
      }
      if (end > MAX_LINE) {
        this.#send(R.lineTooLong);
        continue;
      }
      this.#command(line);
    }
    this.#updatePause();
  }

  /** Backpressure: no reading while the body's reader lags, or past MAX_PENDING while a handler works. */
  #updatePause(): void {
    const want =
      !this.#closed &&
      (this.#bodyFull || this.#outFull || (this.#busy && (this.#pending?.length ?? 0) > MAX_PENDING));
    if (want === this.#paused) return;
    this.#paused = want;
    if (want) this.socket.pause();
    else this.socket.resume();
  }

  /** Runs a handler step: input waits until it settles, then processing goes on. */
  #await<T>(p: Promise<T>, then: (v: T) => void): void {
    this.#busy = true;
    void p.then((v) => {
      this.#busy = false;
      if (this.#closed) return;
      then(v);
      this.#afterReply();
    });
  }

  #afterReply(): void {
    if (this.#stopping && this.idle) this.#fail(formatReply(listenerReplies.shuttingDown()));
    else this.#process();
  }

  #command(line: string): void {
    const sp = line.indexOf(' ');
    const verb = (sp === -1 ? line : line.slice(0, sp)).toUpperCase();
    const arg = sp === -1 ? '' : line.slice(sp + 1).trim();
    if (this.#stopping && this.idle && verb !== 'QUIT') {
      return this.#fail(formatReply(listenerReplies.shuttingDown()));
    }
    if (this.#data?.chunked) {
      // between BDAT chunks: more chunks, or the end of the transaction
      if (verb === 'MAIL') return this.#send(R.nestedMail);
      if (!BETWEEN_CHUNKS.has(verb)) return this.#send(R.inChunking);
      if (verb !== 'BDAT' && verb !== 'NOOP') this.#abortData(new Error('transaction reset during BDAT'));
    }
    switch (verb) {
      case 'EHLO':
      case 'HELO':
        return this.#hello(verb, arg);
      case 'MAIL':
        return this.#mail(arg);
      case 'RCPT':
        return this.#rcpt(arg);
      case 'DATA':
        return this.#startData(arg);
      case 'BDAT':
        return this.#bdat(arg);
      case 'XFORWARD':
        return this.#xforwardCommand(arg);
      case 'RSET':
        this.#reset('reset');
        return this.#send(R.flushed);
      case 'NOOP':
        return this.#send(R.ok);
      case 'QUIT':
        this.#abortData(new Error('QUIT during BDAT'));
        this.#reset('disconnect');
        this.#send(R.bye);
        this.#endAfterFlush = true;
        this.#closed = true;
        return;
      case 'HELP':
        return this.#send(R.help);
      case 'VRFY':
        return this.#send(arg ? R.vrfy : R.vrfySyntax);
      default:
        if (++this.#unrecognized >= MAX_UNRECOGNIZED) return this.#fail(R.tooManyUnrecognized);
        return this.#send(R.unrecognized);
    }
  }

  #hello(verb: 'EHLO' | 'HELO', host: string): void {
    if (!host || /\s/.test(host)) return this.#send(verb === 'EHLO' ? R.ehloSyntax : R.heloSyntax);
    if (!isHostname(host)) return this.#send(R.badHostname);
    this.#reset('reset');
    this.#helo = host.toLowerCase();
    this.#proto = verb === 'EHLO' ? 'ESMTP' : 'SMTP';
    const greeting = `${this.server.o.hostname} Nice to meet you, [${this.session.peer.address}]`;
    if (verb === 'HELO') return this.#send(`250 ${greeting}`);
    const lines = [greeting, 'PIPELINING', '8BITMIME', 'SMTPUTF8', 'ENHANCEDSTATUSCODES', 'DSN', 'CHUNKING'];
    lines.push(`SIZE ${this.server.o.messageSizeLimit}`);
    if (this.server.o.xforward) lines.push('XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE');
    this.#send(formatReply({ code: 250, lines }));
  }

  #xforwardCommand(arg: string): void {
    if (!this.server.o.xforward) return this.#send(R.notAllowed);
    if (!this.#helo) return this.#send(R.heloFirst);
    if (this.#tx) return this.#send(R.inTransaction);
    const parts = arg.split(/\s+/).filter(Boolean);
    if (!parts.length) return this.#send(R.badParameter);
    const params = new Map<string, string | false>();
    for (const part of parts) {
      const eq = part.indexOf('=');
      const key = part.slice(0, eq).toUpperCase();
      if (eq === -1 || part.indexOf('=', eq + 1) !== -1 || !XFORWARD_KEYS.has(key)) {
        return this.#send(R.badParameter);
      }
      let value: string | false = decodeXtext(part.slice(eq + 1));
      if (CONTROL.test(value)) return this.#send(R.badParameter);
      if (UNAVAILABLE.test(value)) value = false;
      if (key === 'ADDR' && value) {
        value = value.replace(/^IPV6:/i, '');
        if (!net.isIP(value)) return this.#send(`${R.badParameter}. Invalid address`);
      }
      if (key === 'NAME' && value && !isHostname(value)) {
        return this.#send(`${R.badParameter}. Invalid hostname`);
      }
      if (key === 'HELO' && value) value = value.toLowerCase();
      if (!params.has(key)) params.set(key, value);
    }
    for (const [k, v] of params) this.#xforward.set(k, v);
    this.#send(R.ok);
  }

  #mail(arg: string): void {
    if (!this.#helo) return this.#send(R.heloFirst);
    const from = parsePath(arg, 'FROM');
    if (!from) return this.#send(R.badSender);
    if (this.#tx) return this.#send(R.nestedMail);
    const limit = this.server.o.messageSizeLimit;
    const size = from.args ? Number((from.args as Record<string, unknown>).SIZE) : NaN;
    if (size > limit) return this.#send(R.tooBigForSize(limit));
    if (undeclaredUtf8(NON_ASCII.test(from.address), from.args))
      return this.#send(formatReply(listenerReplies.utf8Undeclared()));
    const tx: Transaction = {
      id: newQueueId(),
      startedAt: Date.now(),
      client: this.client(),
      mailFrom: from,
      rcptTo: [],
      state: {},
    };
    this.#tx = tx;
    const h = this.server.o.handlers;
    if (!h.mailFrom) return this.#send(R.mailOk);
    this.#await(
      guarded(this.server.o.logger, 'mail', () => h.mailFrom!(tx, this.session)),
      (r) => {
        if (r && r.code >= 400) {
          this.#reset('MAIL refused');
          return this.#send(formatReply(r));
        }
        this.#send(R.mailOk);
      },
    );
  }

  #rcpt(arg: string): void {
    if (!this.#helo) return this.#send(R.heloFirst);
    const to = parsePath(arg, 'TO');
    if (!to) return this.#send(R.badRecipient);
    const tx = this.#tx;
    if (!tx) return this.#send(R.needMail);
    if (undeclaredUtf8(NON_ASCII.test(to.address), tx.mailFrom.args))
      return this.#send(formatReply(listenerReplies.utf8Undeclared()));
    if (hasRecipient(tx, to.address)) return this.#send(R.rcptOk);
    const max = this.server.o.recipientLimit;
    if (max && tx.rcptTo.length >= max) return this.#send(R.tooManyRecipients);
    const h = this.server.o.handlers;
    if (!h.rcptTo) {
      tx.rcptTo.push(to);
      return this.#send(R.rcptOk);
    }
    this.#await(
      guarded(this.server.o.logger, 'rcpt', () => h.rcptTo!(to, tx, this.session)),
      (r) => {
        if (r && r.code >= 400) return this.#send(formatReply(r));
        tx.rcptTo.push(to);
        this.#send(R.rcptOk);
      },
    );
  }

  #startData(arg: string): void {
    if (!this.#helo) return this.#send(R.heloFirst);
    const tx = this.#tx;
    if (!tx) return this.#send(R.needMail);
    if (arg) return this.#send(R.badParameter);
    if (!tx.rcptTo.length) return this.#send(R.needRcpt);
    this.#send(R.goAhead);
    this.#openData(tx, false);
  }

  /** Hands the transaction to the data handler, whose reply ends it (DATA, or the first BDAT). */
  #openData(tx: Transaction, chunked: boolean): DataPhase {
    // from here on the data handler alone owns the transaction (a disconnect shows as a body error)
    this.#tx = undefined;
    const d: DataPhase = {
      chunked,
      body: new Body(() => this.#wanted()),
      rule: new LineEndings(),
      bytes: 0,
      lastByte: LF,
      tooBig: false,
      lineStart: true,
      prevCrlf: true,
      lastCr: false,
      ended: false,
      reply: undefined,
    };
    d.body.on('error', () => undefined);
    this.#data = d;
    const info: DataInfo = { bareLineEndings: () => d.rule.bareLineEndings, bytes: () => d.bytes };
    const h = this.server.o.handlers;
    void guarded(this.server.o.logger, 'data', () => h.data(d.body, tx, this.session, info)).then((r) => {
      d.reply = r ?? listenerReplies.internalError();
      // a handler that answered before the body ended (its disk failed) reads no further: the rest is
      // read to the end and dropped (#bodyBytes), so a socket its backpressure paused must read again
      if (!d.ended && this.#data === d) this.#wanted();
      this.#finishData(d);
    });
    return d;
  }

  /**
   * BDAT (RFC 3030): the chunk's bytes are read whatever the answer, so a refused chunk is never read
   * as commands; only a count that cannot be read ends the session (nothing tells where the chunk ends).
   */
  #bdat(arg: string): void {
    const m = /^(\d{1,15})(?:\s+(LAST))?$/i.exec(arg);
    if (!m) return this.#fail(R.bdatSyntax);
    const size = Number(m[1]);
    const chunk: Chunk = { size, remaining: size, last: !!m[2], refused: undefined };
    this.#chunk = chunk;
    if (!this.#data) {
      const tx = this.#tx;
      if (!this.#helo) chunk.refused = R.heloFirst;
      else if (!tx) chunk.refused = R.needMail;
      else if (!tx.rcptTo.length) chunk.refused = R.needRcpt;
      else this.#openData(tx, true);
    }
    if (!size) this.#chunkDone(chunk);
  }

  /** Takes the current chunk's bytes from #pending; true when the chunk is complete. */
  #takeChunk(): boolean {
    const c = this.#chunk!;
    const buf = this.#pending!;
    const take = Math.min(c.remaining, buf.length);
    c.remaining -= take;
    this.#pending = take < buf.length ? buf.subarray(take) : undefined;
    const d = this.#data;
    if (!c.refused && d) this.#bodyBytes(d, take < buf.length ? buf.subarray(0, take) : buf);
    if (c.remaining > 0) return false;
    this.#chunkDone(c);
    return true;
  }

  #chunkDone(c: Chunk): void {
    this.#chunk = undefined;
    if (c.refused) return this.#send(c.refused);
    const d = this.#data;
    if (!d) return;
    if (!c.last) {
      if (d.tooBig) return this.#send(formatReply(listenerReplies.messageTooBig()));
      if (d.reply && d.reply.code >= 400) return this.#send(formatReply(d.reply));
      return this.#send(R.chunkOk(c.size));
    }
    // a body that does not end with CRLF gets one, as the end of DATA gives it
    if (d.lastByte !== LF && d.lastByte !== CR) this.#bodyBytes(d, CRLF);
    this.#hold = true;
    this.#endData(d);
  }

  /** The message is complete (CRLF.CRLF, or BDAT LAST): its body ends, and input waits for the reply. */
  #endData(d: DataPhase): void {
    d.ended = true;
    if (!d.tooBig && d.reply === undefined) {
      const last = d.rule.flush();
      if (last) d.body.push(last);
      d.body.push(null);
    }
    this.#busy = true;
    this.#finishData(d);
  }

  /** The body reader wants more: resume a socket that backpressure paused. */
  #wanted(): void {
    if (!this.#bodyFull) return;
    this.#bodyFull = false;
    this.#updatePause();
  }

  /**
   * Takes message bytes from #pending. Returns true when the data phase ended (CRLF.CRLF), false
   * when it needs more input.
   */
  #takeData(): boolean {
    const d = this.#data!;
    const buf = this.#pending!;
    let p = 0;
    // the bytes taken go on as runs of buf (subarrays, no copy); a removed dot ends a run
    let from = 0;
    let ended = false;
    while (p < buf.length) {
      if (d.lineStart && buf[p] === DOT) {
        if (d.prevCrlf) {
          // "." CRLF after a CRLF ends the data; wait for the bytes that decide
          if (buf.length - p < 3 && (buf.length - p === 1 || buf[p + 1] === CR)) break;
          if (buf[p + 1] === CR && buf[p + 2] === LF) {
            if (p > from) this.#bodyBytes(d, buf.subarray(from, p));
            from = p += 3;
            ended = true;
            break;
          }
        }
        // dot-unstuffing
        if (p > from) this.#bodyBytes(d, buf.subarray(from, p));
        from = ++p;
      }
      d.lineStart = false;
      const nl = buf.indexOf(LF, p);
      if (nl === -1) {
        if (p < buf.length) d.lastCr = buf[buf.length - 1] === CR;
        p = buf.length;
        break;
      }
      d.prevCrlf = nl > p ? buf[nl - 1] === CR : d.lastCr;
      d.lastCr = false;
      d.lineStart = true;
      p = nl + 1;
    }
    if (!ended && p > from) this.#bodyBytes(d, buf.subarray(from, p));
    this.#pending = p < buf.length ? buf.subarray(p) : undefined;
    if (!ended) return false;
    this.#endData(d);
    return false;
  }

  #bodyBytes(d: DataPhase, chunk: Buffer): void {
    d.bytes += chunk.length;
    if (chunk.length) d.lastByte = chunk[chunk.length - 1]!;
    // past the size limit, or once the handler gave its answer, the rest is only read to the end
    if (d.tooBig || d.reply !== undefined) return;
    const limit = this.server.o.messageSizeLimit;
    if (d.bytes > limit) {
      d.tooBig = true;
      d.body.destroy(new MessageTooBig(limit));
      return;
    }
    if (!d.body.push(d.rule.normalize(chunk))) {
      this.#bodyFull = true;
      this.#updatePause();
    }
  }

  #finishData(d: DataPhase): void {
    if (!d.ended || d.reply === undefined || this.#closed || this.#data !== d) return;
    this.#data = undefined;
    this.#busy = false;
    this.#hold = false;
    // past the size limit the reply is ours, whatever the handler made of its failed stream
    const final = d.tooBig ? listenerReplies.messageTooBig() : d.reply;
    this.#send(formatReply(final));
    this.#bodyFull = false;
    this.#afterReply();
  }

  #abortData(err: Error): void {
    const d = this.#data;
    if (!d) return;
    this.#data = undefined;
    if (!d.ended && !d.body.destroyed) d.body.destroy(err);
  }

  /** Ends an open transaction that has no DATA reply coming (the reset handler runs once for it). */
  #reset(why: string): void {
    const tx = this.#tx;
    if (!tx) return;
    this.#tx = undefined;
    try {
      this.server.o.handlers.reset?.(tx, this.session, why);
    } catch (err) {
      this.server.o.logger.error({ err }, 'reset handler failed');
    }
  }

  #onClose(): void {
    this.#closed = true;
    this.#abortData(new Error('client disconnected during DATA'));
    this.#reset('disconnect');
    this.server.connections.delete(this);
    try {
      this.server.o.handlers.close?.(this.session);
    } finally {
      this.server.closed();
    }
  }
}

export const NON_ASCII = /[^\p{ASCII}]/u;

/**
 * A non-ASCII address (`nonAscii`: as the client wrote it) in a transaction whose MAIL did not declare
 * SMTPUTF8 (RFC 6531): both engines answer it 553 5.6.7.
 */
export function undeclaredUtf8(nonAscii: boolean, mailArgs: Address['args'] | undefined): boolean {
  return nonAscii && !(mailArgs && (mailArgs as Record<string, unknown>).SMTPUTF8);
}

/**
 * A recipient already in the transaction, compared as delivery files it (the local part lower-cased):
 * a RCPT repeated, in any case, adds no copy and does not count again against the recipient limit,
 * as Postfix's duplicate filter does. Both engines answer it 250 without asking the handler again.
 */
export function hasRecipient(tx: Transaction, address: string): boolean {
  const key = address.toLowerCase();
  return tx.rcptTo.some((r) => r.address.toLowerCase() === key);
}

/** 421 4.7.0 to a connection from outside the port's peers, before anything is read (both engines). */
export function refuseNotAPeer(socket: net.Socket, logger: Logger): void {
  const address = socket.remoteAddress ?? '';
  const r = listenerReplies.notAPeer(address);
  logger.warn(
    { peer: address, port: socket.remotePort, reply: `${r.code} ${r.lines[0]}` },
    'refused: not a peer',
  );
  closeWith(socket, r);
}

/** Logs a client turned away because `maxClients` sessions are open (both engines), as Postfix's master warns. */
export function serverFull(o: ListenerOptions, client: string): void {
  o.logger.warn(
    { client, maxClients: o.maxClients },
    `warning: service "${o.service}" has reached its client limit "${o.maxClients}": ${client} gets 421 4.3.2`,
  );
}

/** Answers a connection with one reply before anything is read, and closes it (at the latest after 1 s). */
export function closeWith(socket: net.Socket, r: Reply): void {
  socket.on('error', () => undefined);
  socket.end(`${formatReply(r)}\r\n`);
  setTimeout(() => socket.destroy(), 1000).unref();
}

export class LeanServer {
  readonly connections = new Set<LeanConnection>();
  readonly #peers: NetworkList | undefined;
  readonly #net: net.Server;
  #onIdle: (() => void) | undefined;

  constructor(readonly o: ListenerOptions) {
    if (o.tls || o.proxyPeers?.length) {
      throw new Error(`${o.service}: the lean listener speaks neither STARTTLS nor PROXY`);
    }
    this.#peers = o.peers.length ? new NetworkList(o.peers) : undefined;
    this.#net = net.createServer((socket) => this.#accept(socket));
  }

  #accept(socket: net.Socket): void {
    if (this.#peers && !this.#peers.has(socket.remoteAddress ?? '')) {
      refuseNotAPeer(socket, this.o.logger);
      return;
    }
    if (this.o.maxClients && this.connections.size >= this.o.maxClients) {
      serverFull(this.o, socket.remoteAddress ?? '');
      closeWith(socket, listenerReplies.serverBusy());
      return;
    }
    const c = new LeanConnection(this, socket);
    this.connections.add(c);
    void c.start();
  }

  listen(host: string, port: number): Promise<net.AddressInfo> {
    return new Promise((resolve, reject) => {
      this.#net.once('error', reject);
      this.#net.listen(port, host, () => {
        this.#net.off('error', reject);
        this.#net.on('error', (err) => this.o.logger.error({ err }, 'listener error'));
        resolve(this.#net.address() as net.AddressInfo);
      });
    });
  }

  closed(): void {
    if (!this.connections.size) this.#onIdle?.();
  }

  /** Stops accepting; idle sessions get 421 now, busy ones after their reply or closeTimeoutMs. */
  close(): Promise<void> {
    return new Promise((resolve) => {
      this.#net.close();
      const timer = setTimeout(() => {
        for (const c of this.connections) c.destroy();
      }, this.o.closeTimeoutMs ?? 30_000);
      timer.unref();
      this.#onIdle = () => {
        clearTimeout(timer);
        resolve();
      };
      for (const c of this.connections) c.stop();
      this.closed();
    });
  }
}

export async function createLeanListener(o: ListenerOptions): Promise<Listener> {
  const hp = parseHostPort(o.listen);
  if (!hp) throw new Error(`listen: not host:port: ${o.listen}`);
  const server = new LeanServer(o);
  const bound = await server.listen(hp.host, hp.port);
  return {
    engine: 'lean',
    address: { host: bound.address, port: bound.port },
    close: () => server.close(),
  };
}
