/**
 * listener: the SMTP listener of every Moat hop, on one of two engines behind the same handlers:
 *   - `lean` (lean.ts), our own server, for the ports between Moat's own services (filter, delivery,
 *     quarantine): no TLS, no PROXY, and a third less CPU per message than smtp-server (see lean.ts);
 *   - `smtp-server`, wrapped here, for the public MX (greylist): STARTTLS and PROXY.
 * createListener picks lean unless TLS, PROXY or handover is asked for. Both give the same replies word for word
 * and the same guarantees (the listener tests run against both).
 *
 * What the wrapper adds to smtp-server, each in one place (lean.ts does the same on its own):
 *   - peers: a connection from outside `peers` gets 421 4.7.0 before anything is read (internal ports);
 *   - PROXY v1 read from `proxyPeers` only (CIDR lists, not just exact addresses);
 *   - XFORWARD accepted only when `xforward` is set (the port is already limited to its peers);
 *   - no reverse DNS (disableReverseLookup): the chain never resolves, screen does it once at the edge;
 *   - no fixed 100 ms early-talker wait before the banner (HopConnection.init): every Moat listener sits
 *     behind screen (which runs the pregreet test) or another hop, where the wait only costs throughput
 *     (smtp-server 3.21 has no option for it; see PERFORMANCE.md). Tested by the banner-latency test;
 *   - TCP_NODELAY on every accepted socket;
 *   - clients handed over by screen (`handover`, smtp-server engine): their own connection, received
 *     on a Unix socket (@moat/handover) instead of spliced behind a PROXY header. They skip
 *     the peers check (the socket file's mode is the check) and keep postscreen's per-client
 *     connection limit, which screen no longer counts once it let go;
 *   - explicit replies: a reply text that already starts with an enhanced status code is sent as is
 *     (HopConnection.send), so "550 5.7.1 ..." never becomes "550 5.1.1 5.7.1 ..."; multi-line replies
 *     relayed from the next hop keep their lines; a handler that throws gets 451 4.3.0, never a 5xx;
 *   - the body as a stream, line endings normalised by the one rule in line-endings.ts, with a byte
 *     limit that stops the stream as soon as it is passed;
 *   - transactions with a life cycle: `reset` is called once for every transaction that ends without
 *     its DATA reply (RSET, HELO/EHLO, rejected MAIL, QUIT, disconnect), so hops can release what
 *     they opened downstream.
 */
import net from 'node:net';
import type { Readable } from 'node:stream';
import { domainToASCII } from 'node:url';
import { NetworkList, parseHostPort } from '@moat/config';
import { type HandedSocket, HandoverReceiver } from '@moat/handover';
import type { Logger } from '@moat/log';
import {
  SMTPServer,
  type SMTPServerAddress,
  type SMTPServerOptions,
  type SMTPServerSession,
} from 'smtp-server';
import { SMTPConnection } from 'smtp-server/lib/smtp-connection.js';
import {
  closeWith,
  createLeanListener,
  hasRecipient,
  NON_ASCII,
  refuseNotAPeer,
  serverFull,
  undeclaredUtf8,
} from './lean.js';
import { LineEndingNormalizer, MessageTooBig } from './line-endings.js';
import { type ClientInfo, forwardedClient, newQueueId } from './received.js';
import { guarded, listenerReplies, type Reply, SmtpError } from './replies.js';

export type Address = SMTPServerAddress;

export interface Transaction {
  /** This hop's queue id for the message. */
  readonly id: string;
  readonly startedAt: number;
  readonly client: ClientInfo;
  readonly mailFrom: Address;
  /** Accepted recipients so far. */
  readonly rcptTo: Address[];
  /** Per-transaction state owned by the service (a downstream connection, check results...). */
  readonly state: Record<string, unknown>;
}

export interface HopSession {
  readonly connectionId: string;
  /** The socket's peer: the previous hop (or the client itself at the first hop). */
  readonly peer: { address: string; port: number };
  readonly secure: boolean;
  /**
   * The connection is gone (the client hung up, timed out, or the server ended it): no reply can
   * reach the client any more, so a data handler must not act on the message after that (the client
   * saw no 250 and will send it again).
   */
  readonly closed: boolean;
  client(): ClientInfo;
}

export interface DataInfo {
  /** Lines whose bare CR or LF the listener normalised. */
  bareLineEndings(): number;
  /** Bytes received so far (after dot-unstuffing, before normalisation). */
  bytes(): number;
}

export interface HopHandlers {
  /** Return a reply >= 400 to refuse the session. */
  connect?(session: HopSession): Promise<Reply | void> | Reply | void;
  /** Return a reply >= 400 to refuse the sender; nothing to accept with 250 2.1.0. */
  mailFrom?(tx: Transaction, session: HopSession): Promise<Reply | void> | Reply | void;
  /** Return a reply >= 400 to refuse this recipient; nothing to accept with 250 2.1.5. */
  rcptTo?(rcpt: Address, tx: Transaction, session: HopSession): Promise<Reply | void> | Reply | void;
  /**
   * The message. Resolve with the final reply; a 2xx reply means the message is safe with this hop
   * (on disk, or acknowledged by the next hop). The body stream fails with MessageTooBig past the size
   * limit, or with an error if the client disconnects: resolve or reject as you like then, the
   * listener answers (552) or has no one to answer.
   */
  data(body: Readable, tx: Transaction, session: HopSession, info: DataInfo): Promise<Reply>;
  /** The transaction ended without a DATA reply: release whatever it holds. Called at most once. */
  reset?(tx: Transaction, session: HopSession, why: string): void;
  close?(session: HopSession): void;
}

export interface ListenerOptions {
  /** Service name, used in logs and Received headers. */
  service: string;
  hostname: string;
  listen: string;
  /** CIDRs allowed to connect; empty = anyone (the public port). */
  peers: readonly string[];
  /** CIDRs whose connections start with a PROXY v1 header. */
  proxyPeers?: readonly string[];
  /** Accept XFORWARD (from peers). */
  xforward?: boolean;
  /** Byte limit for a message (Postfix: message_size_limit). */
  messageSizeLimit: number;
  /** Recipients per transaction. */
  recipientLimit?: number;
  /** Idle time between commands. */
  idleTimeoutMs?: number;
  /** Grace period for open sessions on stop, then 421. */
  closeTimeoutMs?: number;
  /**
   * smtp-server engine (the MX): after this many 4xx and 5xx replies without a message accepted, the
   * next command gets `421 4.7.0 <hostname> Error: too many errors` and the session ends (Postfix's
   * smtpd_hard_error_limit). 0 or absent: no limit.
   */
  errorLimit?: number;
  /**
   * Sessions open at once (Postfix: the smtpd process limit, default_process_limit 100); past it a new
   * client gets `421 4.3.2 All server ports are busy` (postscreen's words when smtpd is full) and is
   * closed. 0 or absent: no limit.
   */
  maxClients?: number;
  /**
   * `lean` (our own server, lean.ts) for the hops between Moat's services; `smtp-server` for the
   * public MX. Default: lean unless TLS, PROXY or handover is asked for.
   */
  engine?: 'lean' | 'smtp-server';
  /**
   * Receive clients handed over by screen at `socketPath` (smtp-server engine only); at most
   * `clientLimit` open at once per client address among those screen counted (0 = no limit).
   */
  handover?: { socketPath: string; clientLimit: number } | undefined;
  /** STARTTLS; without it STARTTLS is not offered. */
  tls?: { key: Buffer | string; cert: Buffer | string } | undefined;
  logger: Logger;
  handlers: HopHandlers;
}

const ENHANCED = /^[245]\.\d{1,3}\.\d{1,3}(?: |$)/;

interface ConnectionInternals {
  _server: HopServer;
  _setListeners(cb: () => void): void;
  connectionReady(): void;
  send(code: number, data?: string | string[] | null, context?: string | false): void;
  session: SMTPServerSession;
}

/** Connections that corked their socket this turn; one setImmediate uncorks them all. */
let corkedThisTurn: HopConnection[] = [];

function uncorkTurn(): void {
  const list = corkedThisTurn;
  corkedThisTurn = [];
  for (const connection of list) connection.releaseCork();
}

/** 4xx and 5xx replies of a session since it last had a message accepted (see `errorLimit`). */
const sessionErrors = new WeakMap<object, number>();
/** Recipients refused past the recipient limit, per session (see RECIPIENT_OVERSHOOT). */
const overshoots = new WeakMap<object, number>();
/** Excess recipients that do not count as errors (Postfix: smtpd_recipient_overshoot_limit). */
const RECIPIENT_OVERSHOOT = 1000;

/**
 * What a session did, for its one `disconnect from` line (Postfix's smtpd): each command verb and how
 * often, the last one, and how the session ended when it was not the client's QUIT.
 */
interface SessionStats {
  counts: Map<string, number>;
  last: string;
  ended?: string;
}
const sessionStats = new WeakMap<object, SessionStats>();

function statsOf(session: object): SessionStats {
  let s = sessionStats.get(session);
  if (!s) sessionStats.set(session, (s = { counts: new Map(), last: 'CONNECT' }));
  return s;
}

/** Postfix's words: `disconnect from [ip]:port ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5`. */
function disconnectLine(session: SMTPServerSession, s: SessionStats): { msg: string; ended: string } {
  let total = 0;
  const parts: string[] = [];
  for (const [verb, n] of s.counts) {
    parts.push(`${verb.toLowerCase()}=${n}`);
    total += n;
  }
  parts.push(`commands=${total}`);
  const ended = s.ended ?? (s.last === 'QUIT' ? 'quit' : `lost connection after ${s.last}`);
  return {
    msg: `disconnect from [${session.remoteAddress}]:${session.remotePort} ${parts.join(' ')}`,
    ended,
  };
}

/** Addresses whose command had a byte outside ASCII: they need MAIL ... SMTPUTF8 (RFC 6531). */
const unicodeAddresses = new WeakSet<object>();
/** Full stops of other scripts, which smtp-server's punycode would read as "." (SMTP has only "."). */
const OTHER_DOTS = /[\u3002\uff0e\uff61]/;

/** SMTPConnection without the fixed wait before the banner, and with explicit enhanced codes. */
class HopConnection extends SMTPConnection {
  /**
   * smtp-server turns every domain into Unicode (punycode.toUnicode). Domains go on in their ASCII
   * form instead (an IDN's A-label, as `domains` lists it and DNS knows it), so relay protection, the
   * recipient table and the next hops see one spelling; a non-ASCII command is marked for the SMTPUTF8
   * rule; and the full stops of other scripts, which it would have read as ".", are a syntax error.
   */
  override _parseAddressCommand(rawName: string, rawCommand: Buffer | string) {
    const command = rawCommand.toString();
    if (OTHER_DOTS.test(command)) return false;
    const parsed = super._parseAddressCommand(rawName, rawCommand);
    if (!parsed || !parsed.address) return parsed;
    // the domain as the client wrote it (toUnicode also reads "xn--test-" as "test"), in ASCII form
    const at = parsed.address.lastIndexOf('@');
    const written = /<([^<>]*)>/.exec(command)?.[1] ?? '';
    const domain = written.slice(written.lastIndexOf('@') + 1);
    if (at >= 0 && !domain.startsWith('[')) {
      const ascii = NON_ASCII.test(domain) ? domainToASCII(domain) : domain;
      if (!ascii) return false;
      parsed.address = `${parsed.address.slice(0, at)}@${ascii}`;
    }
    if (NON_ASCII.test(command)) unicodeAddresses.add(parsed);
    if (/^RCPT/i.test(rawName)) this.#lastRcpt = parsed.address;
    else if (/^MAIL/i.test(rawName)) this.#lastMail = parsed.address;
    return parsed;
  }

  override init(): void {
    const self = this as unknown as ConnectionInternals;
    self._setListeners(() => {
      const max = self._server.hop.maxClients;
      if (max && self._server.connections.size > max) {
        serverFull(self._server.hop, (this as unknown as { remoteAddress: string }).remoteAddress);
        statsOf(self.session).ended = 'refused';
        const r = listenerReplies.serverBusy();
        self.send(r.code, r.lines[0], false); // a 421: smtp-server closes the connection
        return;
      }
      self.connectionReady();
    });
  }

  #corked: net.Socket | undefined;
  /** The address of the RCPT command being answered (for the log line of a refusal smtp-server makes itself). */
  #lastRcpt = '';
  /** The address of the MAIL command being answered (likewise). */
  #lastMail = '';

  releaseCork(): void {
    const socket = this.#corked;
    this.#corked = undefined;
    socket?.uncork();
  }

  override _onCommand(command: Buffer, callback?: () => void): void {
    const self = this as unknown as ConnectionInternals & { _upgrading?: boolean; close(): void };
    const verb = /^\s*([A-Za-z]{1,12})\b/.exec(command.toString('latin1'))?.[1]?.toUpperCase() ?? 'UNKNOWN';
    const stats = statsOf(self.session);
    stats.counts.set(verb, (stats.counts.get(verb) ?? 0) + 1);
    stats.last = verb;
    const limit = self._server.hop.errorLimit ?? 0;
    if (limit > 0 && !self._upgrading && (sessionErrors.get(self.session) ?? 0) >= limit) {
      const text = `4.7.0 ${self._server.hop.hostname} Error: too many errors`;
      // Postfix's "too many errors after RCPT from host[ip]": the one line saying why the session ended
      const { remoteAddress: ip, remotePort: port } = self.session;
      const after = /^\s*([A-Za-z]+)/.exec(command.toString('latin1'))?.[1] ?? 'CONNECT';
      self._server.hop.logger.info(
        { client: ip, port, errors: sessionErrors.get(self.session), reply: `421 ${text}` },
        `too many errors after ${after.toUpperCase()} from [${ip}]:${port}`,
      );
      stats.ended = `too many errors after ${verb}`;
      self.send(421, text, false);
      self.close();
      callback?.();
      return;
    }
    super._onCommand(command, callback);
  }

  override send(code: number, data?: string | string[] | null, context?: string | false): void {
    if (code === 421) {
      const session = (this as unknown as ConnectionInternals).session;
      const stats = statsOf(session);
      // smtp-server's own 421s: the idle timeout, the server closing
      stats.ended ??= /timeout/i.test(String(data))
        ? `timeout after ${stats.last}`
        : `421 after ${stats.last}: ${String(data).slice(0, 80)}`;
    }
    if (code >= 400 && code !== 421) {
      const session = (this as unknown as ConnectionInternals).session;
      // recipients past recipientLimit are not errors until RECIPIENT_OVERSHOOT of them (Postfix's
      // smtpd_recipient_overshoot_limit): a client pipelining more recipients than the limit gets 452
      // for the excess and its message delivered to the first ones, not a 421 that loses them all
      const overshoot = context === 'TOO_MANY_RECIPIENTS' ? (overshoots.get(session) ?? 0) + 1 : 0;
      // smtp-server refuses these itself, before any handler sees them: without this line a recipient
      // past the limit is in no log, and nobody can tell why it never got the message
      if (overshoot) {
        const server = (this as unknown as ConnectionInternals)._server;
        server.hop.logger.info(
          {
            id: server.transaction(session)?.id,
            client: session.remoteAddress,
            from: session.envelope?.mailFrom ? session.envelope.mailFrom.address : undefined,
            to: this.#lastRcpt,
            why: `more than recipientLimit (${server.hop.recipientLimit})`,
            reply: `${code} 4.5.3 ${String(data)}`,
          },
          'NOQUEUE: reject: RCPT',
        );
      }
      // a SIZE= past the limit at MAIL, refused by smtp-server itself: one line, as Postfix's NOQUEUE
      if (context === 'MESSAGE_TOO_BIG' && !session.envelope?.mailFrom) {
        const server = (this as unknown as ConnectionInternals)._server;
        server.hop.logger.info(
          {
            client: session.remoteAddress,
            from: this.#lastMail,
            why: `declared size over messageSizeLimit (${server.hop.messageSizeLimit})`,
            reply: `${code} 5.3.4 ${String(data)}`,
          },
          'NOQUEUE: reject: MAIL',
        );
      }
      if (overshoot) overshoots.set(session, overshoot);
      if (overshoot === 0 || overshoot > RECIPIENT_OVERSHOOT)
        sessionErrors.set(session, (sessionErrors.get(session) ?? 0) + 1);
    }
    // Replies produced in one turn of the event loop (a pipelined XFORWARD, MAIL, RCPT, DATA) leave in
    // one write: each write on a no-delay socket is a syscall and a wake-up of the peer. One
    // setImmediate per turn for every connection that replied, not one per reply.
    const socket = (this as unknown as { _socket: net.Socket })._socket;
    if (socket && !this.#corked && !socket.destroyed) {
      socket.cork();
      this.#corked = socket;
      if (corkedThisTurn.push(this) === 1) setImmediate(uncorkTurn);
    }
    let payload = data;
    if (typeof payload === 'string' && payload.includes('\n')) payload = payload.split('\n');
    // smtp-server sends QUIT's reply without an enhanced code; Postfix's words are "221 2.0.0 Bye"
    if (code === 221 && payload === 'Bye') payload = '2.0.0 Bye';
    const first = Array.isArray(payload) ? payload[0] : payload;
    const explicit = typeof first === 'string' && ENHANCED.test(first);
    super.send(code, payload, explicit ? false : context);
  }

  override _resetSession(): void {
    const self = this as unknown as ConnectionInternals;
    if (self.session?.envelope) self._server.endTransaction(self.session, 'reset');
    super._resetSession();
  }
}

function toError(r: Reply): SmtpError {
  return new SmtpError(r);
}

/**
 * A refusal for smtp-server's MAIL and RCPT callbacks, which read only its `responseCode` and
 * `message` (smtp-connection.js, handler_MAIL and handler_RCPT: `this.send(err.responseCode || 550,
 * err.message)`). A plain object, not an Error: an Error captures a stack trace when it is built,
 * and at one 451 per greylisted RCPT that was 5-10% of the greylist process's CPU.
 */
function refusal(r: Reply): Error & { responseCode: number } {
  return { name: 'SmtpError', message: r.lines.join('\n'), responseCode: r.code };
}

export class HopServer extends SMTPServer {
  readonly #peers: NetworkList | undefined;
  readonly #proxyPeers: NetworkList;
  readonly #tx = new WeakMap<object, Transaction>();
  readonly #sessions = new WeakMap<SMTPServerSession, HopSession>();
  /** Sessions whose connection closed. */
  readonly closedSessions = new WeakSet<SMTPServerSession>();

  constructor(
    readonly hop: ListenerOptions,
    serverOptions: SMTPServerOptions,
  ) {
    super(serverOptions);
    this.#peers = hop.peers.length ? new NetworkList(hop.peers) : undefined;
    this.#proxyPeers = new NetworkList(hop.proxyPeers ?? []);
  }

  override connect(socket: net.Socket, socketOptions?: object | null): void {
    socket.setNoDelay(true);
    const connection = new HopConnection(this, socket, socketOptions as never);
    this.connections.add(connection);
    connection.on('error', (err: Error) => this.hop.logger.debug({ err: err.message }, 'connection error'));
    connection.init();
  }

  override _expectsProxyHeader(socket: net.Socket): boolean {
    return this.#proxyPeers.has(socket.remoteAddress ?? '');
  }

  override _handleProxy(
    socket: net.Socket,
    callback: (err: Error | null, socketOptions?: { id: string }) => void,
  ): void {
    if (this.#peers && !this.#peers.has(socket.remoteAddress ?? '')) {
      refuseNotAPeer(socket, this.hop.logger);
      callback(new Error('not a peer'));
      return;
    }
    super._handleProxy(socket, callback);
  }

  hopSession(raw: SMTPServerSession): HopSession {
    let s = this.#sessions.get(raw);
    if (!s) {
      const closedSessions = this.closedSessions;
      const internals = raw as SMTPServerSession & { xForward?: Map<string, unknown> };
      s = {
        connectionId: raw.id,
        peer: { address: raw.remoteAddress, port: raw.remotePort },
        get secure() {
          return !!raw.secure;
        },
        get closed() {
          return closedSessions.has(raw);
        },
        client: (): ClientInfo =>
          forwardedClient(internals.xForward, {
            address: raw.remoteAddress,
            port: Number(raw.remotePort) || 0,
            helo: raw.hostNameAppearsAs || '',
            proto: raw.transmissionType ?? 'SMTP',
          }),
      };
      this.#sessions.set(raw, s);
    }
    return s;
  }

  /** Ends the current transaction of a session if it did not reach its DATA reply. */
  endTransaction(raw: SMTPServerSession, why: string): void {
    const tx = this.#tx.get(raw.envelope);
    if (!tx) return;
    this.#tx.delete(raw.envelope);
    try {
      this.hop.handlers.reset?.(tx, this.hopSession(raw), why);
    } catch (err) {
      this.hop.logger.error({ err }, 'reset handler failed');
    }
  }

  transaction(raw: SMTPServerSession): Transaction | undefined {
    return this.#tx.get(raw.envelope);
  }

  beginTransaction(raw: SMTPServerSession, mailFrom: Address): Transaction {
    this.endTransaction(raw, 'new MAIL');
    const tx: Transaction = {
      id: newQueueId(),
      startedAt: Date.now(),
      client: this.hopSession(raw).client(),
      mailFrom,
      rcptTo: [],
      state: {},
    };
    this.#tx.set(raw.envelope, tx);
    return tx;
  }

  /** Hands a transaction over to its DATA handler, so no reset is called for it. */
  finishTransaction(raw: SMTPServerSession): void {
    this.#tx.delete(raw.envelope);
  }
}

export interface Listener {
  readonly engine: 'lean' | 'smtp-server';
  /** The smtp-server engine's server. */
  readonly server?: HopServer;
  /** The bound address (port resolved when 0 was asked for). */
  readonly address: { host: string; port: number };
  /** Stops accepting, lets open sessions finish for closeTimeoutMs, then answers them 421. */
  close(): Promise<void>;
}

export async function createListener(o: ListenerOptions): Promise<Listener> {
  const engine = o.engine ?? (o.tls || o.proxyPeers?.length || o.handover ? 'smtp-server' : 'lean');
  return engine === 'lean' ? createLeanListener(o) : createSmtpServerListener(o);
}

async function createSmtpServerListener(o: ListenerOptions): Promise<Listener> {
  const { handlers, logger } = o;
  const hp = parseHostPort(o.listen);
  if (!hp) throw new Error(`listen: not host:port: ${o.listen}`);

  const options: SMTPServerOptions = {
    name: o.hostname,
    logger: false,
    disableReverseLookup: true,
    // enhanced status codes on every reply (smtp-server hides them unless asked)
    hideENHANCEDSTATUSCODES: false,
    authOptional: true,
    disabledCommands: o.tls ? ['AUTH'] : ['AUTH', 'STARTTLS'],
    hideSTARTTLS: !o.tls,
    ...(o.tls ? { key: o.tls.key, cert: o.tls.cert } : {}),
    size: o.messageSizeLimit,
    ...(o.recipientLimit ? { maxRecipients: o.recipientLimit } : {}),
    useXForward: !!o.xforward,
    useXClient: false,
    socketTimeout: o.idleTimeoutMs ?? 300_000,
    closeTimeout: o.closeTimeoutMs ?? 30_000,
    onConnect(raw, cb) {
      const session = server.hopSession(raw);
      if (!handlers.connect) return cb();
      void guarded(logger, 'connect', () => handlers.connect!(session)).then((r) =>
        r && r.code >= 400 ? cb(toError(r)) : cb(),
      );
    },
    onMailFrom(address, raw, cb) {
      if (undeclaredUtf8(unicodeAddresses.has(address), address.args))
        return cb(refusal(listenerReplies.utf8Undeclared()));
      const session = server.hopSession(raw);
      const tx = server.beginTransaction(raw, address);
      void guarded(logger, 'mail', () => handlers.mailFrom?.(tx, session)).then((r) => {
        if (r && r.code >= 400) {
          server.endTransaction(raw, 'MAIL refused');
          return cb(refusal(r));
        }
        cb();
      });
    },
    onRcptTo(address, raw, cb) {
      const session = server.hopSession(raw);
      const tx = server.transaction(raw);
      if (!tx) return cb(refusal(listenerReplies.internalError()));
      if (undeclaredUtf8(unicodeAddresses.has(address), tx.mailFrom.args))
        return cb(refusal(listenerReplies.utf8Undeclared()));
      // a recipient given twice is one recipient (smtp-server keeps one in its envelope too)
      if (hasRecipient(tx, address.address)) return cb();
      void guarded(logger, 'rcpt', () => handlers.rcptTo?.(address, tx, session)).then((r) => {
        if (r && r.code >= 400) return cb(refusal(r));
        tx.rcptTo.push(address);
        cb();
      });
    },
    onData(stream, raw, cb) {
      const session = server.hopSession(raw);
      const tx = server.transaction(raw);
      const normalizer = new LineEndingNormalizer(o.messageSizeLimit);
      const drain = () => {
        // whatever the handler did, the rest of the message must still be read for the reply to go out
        stream.unpipe(normalizer);
        if (!stream.readableEnded) stream.resume();
      };
      stream.on('error', (err) => normalizer.destroy(err));
      stream.pipe(normalizer);
      let tooBig = false;
      normalizer.on('error', (err) => {
        if (err instanceof MessageTooBig) {
          tooBig = true;
          drain();
        }
      });
      if (!tx) {
        drain();
        return cb(toError(listenerReplies.internalError()));
      }
      // from here on the data handler alone owns the transaction (a disconnect shows as a body error)
      server.finishTransaction(raw);
      const info: DataInfo = {
        bareLineEndings: () => normalizer.bareLineEndings,
        bytes: () => normalizer.bytes,
      };
      void guarded(logger, 'data', () => handlers.data(normalizer, tx, session, info)).then((r) => {
        drain();
        // past the size limit the reply is ours, whatever the handler made of its failed stream
        const final = tooBig ? listenerReplies.messageTooBig() : (r ?? listenerReplies.internalError());
        if (final.code >= 400) return cb(toError(final));
        sessionErrors.delete(raw); // a message accepted: the client's errors are forgiven
        cb(null, final.lines.join('\n'));
      });
    },
    onClose(raw) {
      server.closedSessions.add(raw);
      server.endTransaction(raw, 'disconnect');
      // one line per session that got its banner, as Postfix's smtpd (a session with no message would
      // otherwise leave no trace after screen's PASS line); not for clients turned away at connect
      const stats = sessionStats.get(raw);
      if (stats?.ended !== 'refused') {
        const { msg, ended } = disconnectLine(raw, stats ?? statsOf(raw));
        logger.info({ client: raw.remoteAddress, ended }, msg);
      }
      handlers.close?.(server.hopSession(raw));
    },
  };
  const server = new HopServer(o, options);
  server.on('error', (err) => logger.error({ err }, 'listener error'));

  await new Promise<void>((resolve, reject) => {
    server.server.once('error', reject);
    server.listen(hp.port, hp.host, () => {
      server.server.off('error', reject);
      resolve();
    });
  });
  const bound = server.server.address() as net.AddressInfo;
  const receiver = o.handover ? receiveHandovers(server, o.handover, logger) : undefined;
  return {
    engine: 'smtp-server',
    server,
    address: { host: bound.address, port: bound.port },
    close: async () => {
      receiver?.close();
      await closeGracefully(server, o.closeTimeoutMs ?? 30_000);
    },
  };
}

/** Sessions between transactions: nothing of theirs would be lost by a 421 now. */
function idle(connection: unknown): boolean {
  const c = connection as {
    _dataStream?: unknown;
    _upgrading?: boolean;
    _closing?: boolean;
    session?: { envelope?: { mailFrom?: unknown } };
  };
  return !c._dataStream && !c._upgrading && !c._closing && !c.session?.envelope?.mailFrom;
}

/**
 * Stops the server as the lean engine does: no new clients, idle sessions answered 421 at once, a
 * session in a transaction allowed to finish it (and then answered 421) for up to `timeoutMs`, then
 * 421 to whatever is left. smtp-server's own close() waits only while its net.Server has connections:
 * it never sees the clients screen handed over, so on its own it returned at once and the process
 * exited under them, cutting them without a reply.
 */
async function closeGracefully(server: HopServer, timeoutMs: number): Promise<void> {
  const shut = listenerReplies.shuttingDown();
  const answer = (all: boolean) => {
    for (const c of server.connections) {
      if (!all && !idle(c)) continue;
      const conn = c as unknown as ConnectionInternals & { close(): void };
      conn.send(shut.code, shut.lines[0], false);
      conn.close();
    }
  };
  const closed = new Promise<void>((resolve) => server.close(() => resolve()));
  const deadline = Date.now() + timeoutMs;
  answer(false);
  while (server.connections.size && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 50));
    answer(false);
  }
  answer(true);
  await closed;
}

/**
 * Takes the clients screen hands over into `server` as if they had connected to it, with the address
 * screen saw (its PROXY source when a load balancer is in front of it). A receiver that cannot start
 * (a path too long for a Unix socket, a folder we may not write) is logged and left out: screen then
 * finds no socket and splices, so mail still flows.
 */
function receiveHandovers(
  server: HopServer,
  o: { socketPath: string; clientLimit: number },
  logger: Logger,
): HandoverReceiver | undefined {
  const open = new Map<string, number>();
  const onSocket = ({ socket, message }: HandedSocket) => {
    const ip = message.source.address;
    const n = open.get(ip) ?? 0;
    if (message.counted && o.clientLimit > 0 && n >= o.clientLimit) {
      const r = listenerReplies.tooManyConnections();
      logger.info(
        { client: ip, port: message.source.port },
        `NOQUEUE: reject: CONNECT from [${ip}]:${message.source.port}: too many connections`,
      );
      closeWith(socket, r);
      return;
    }
    if (message.counted) {
      open.set(ip, n + 1);
      socket.once('close', () => {
        const left = (open.get(ip) ?? 1) - 1;
        if (left > 0) open.set(ip, left);
        else open.delete(ip);
      });
    }
    if (message.initial) socket.unshift(message.initial);
    server.connect(socket, {
      id: newQueueId(),
      remoteAddress: ip,
      remotePort: message.source.port,
      localAddress: message.destination.address,
      localPort: message.destination.port,
    });
  };
  try {
    return HandoverReceiver.listen(o.socketPath, onSocket, (why) =>
      logger.warn({ handoverSocket: o.socketPath, why }, 'handover: dropped a message'),
    );
  } catch (err) {
    logger.error(
      { handoverSocket: o.socketPath, err: (err as Error).message },
      'handover: cannot receive clients at handoverSocket; screen splices them instead',
    );
    return undefined;
  }
}
