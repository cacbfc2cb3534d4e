/**
 * client: SpamdClient, one spamd (TCP or unix socket) and the eight SPAMC/1.5 commands as typed
 * methods: check, symbols, report, reportIfSpam, headers, process, ping, tell, plus request() for
 * the raw response. Exports SpamdClient, its options and result types. Promises: one connection per
 * request (spamd answers one request per connection); TCP_NODELAY on; no compression; every request
 * is bounded by connectTimeoutMs and by timeoutMs (connect + send + response); every failure rejects
 * with a SpamdError, and a spamd code other than 0 is a SpamdError of kind 'server'.
 */
import net from 'node:net';
import { checkSpamdAddress, formatSpamdAddress, parseSpamdAddress, type SpamdAddress } from './address.js';
import { prepareBody, Stopped, writeRequest, type PreparedBody, type SpamdMessage } from './body.js';
import { SpamdError, type SpamdPhase } from './errors.js';
import {
  buildRequestHead,
  parseSpamHeader,
  parseSymbols,
  parseTellTargets,
  ResponseParser,
  type SpamdCommand,
  type SpamdResponse,
  type TellTarget,
} from './protocol.js';

export interface SpamdClientOptions {
  /** The whole request: connect, send, spamd's scan and its response. Default 30 000 ms. */
  timeoutMs?: number;
  /** Connecting alone (within timeoutMs). Default 5 000 ms. */
  connectTimeoutMs?: number;
  /** `User:` sent with every request unless a request gives its own. Default: none. */
  user?: string;
  /** Larger messages are refused with kind 'too-large' (or truncated, see truncate). Default: no limit. */
  maxSize?: number;
  /** Send only the first maxSize bytes of a larger message instead of refusing it. Default false. */
  truncate?: boolean;
  /** Writes gather at least this many bytes; the request head goes with the first. Default 65 536. */
  writeChunkBytes?: number;
  /** A response body larger than this is refused (kind 'protocol'). Default 64 MiB. */
  maxResponseBytes?: number;
}

/** Per-request overrides of the client's options. */
export interface RequestOptions {
  user?: string;
  timeoutMs?: number;
  connectTimeoutMs?: number;
  maxSize?: number;
  truncate?: boolean;
}

/** What every message command returns; the command-specific result types narrow it. */
export interface SpamdResult {
  isSpam: boolean;
  score: number;
  threshold: number;
  /** SYMBOLS: the rules that hit. */
  symbols?: string[];
  /** REPORT (always) and REPORT_IFSPAM (when spam): the report text. */
  report?: string;
  /** HEADERS: the message's header block as rewritten by SpamAssassin (X-Spam-* added). */
  headers?: string;
  /** PROCESS: the whole rewritten message. */
  message?: Buffer;
  /** True when only the first maxSize bytes were sent. */
  truncated: boolean;
  /** The response as spamd sent it. */
  raw: SpamdResponse;
}

export type CheckResult = SpamdResult;
export type SymbolsResult = SpamdResult & { symbols: string[] };
export type ReportResult = SpamdResult & { report: string };
export type HeadersResult = SpamdResult & { headers: string };
export type ProcessResult = SpamdResult & { message: Buffer };

export interface PingResult {
  /** The protocol version in spamd's PONG line ('1.5'). */
  version: string;
  raw: SpamdResponse;
}

export interface TellOptions extends RequestOptions {
  /** What the message is; required when learning (`set` includes 'local'). */
  messageClass?: 'spam' | 'ham';
  /** Learn into Bayes ('local') and/or report to Razor/Pyzor/SpamCop ('remote'). */
  set?: readonly TellTarget[];
  /** Forget ('local') and/or revoke a report ('remote'). */
  remove?: readonly TellTarget[];
}

export interface TellResult {
  /** What spamd says it did (`DidSet:`); [] when it did nothing (e.g. Bayes off). */
  didSet: TellTarget[];
  /** `DidRemove:`. */
  didRemove: TellTarget[];
  truncated: boolean;
  raw: SpamdResponse;
}

const DEFAULTS = {
  timeoutMs: 30_000,
  connectTimeoutMs: 5_000,
  writeChunkBytes: 64 * 1024,
  maxResponseBytes: 64 * 1024 * 1024,
};

interface Exchange {
  command: SpamdCommand;
  message?: SpamdMessage;
  opts: RequestOptions;
  tell?: Pick<TellOptions, 'messageClass' | 'set' | 'remove'>;
}

/** A client of one spamd. Cheap to create; holds no connection between requests. */
export class SpamdClient {
  /** Where spamd listens. */
  readonly address: SpamdAddress;
  /** 'host:port' or 'unix:/path', as it appears in errors. */
  readonly addressText: string;
  readonly #options: SpamdClientOptions;

  /** `address`: 'host:port', '/path/to.sock', 'unix:/path', { host, port } or { socketPath }. */
  constructor(address: string | SpamdAddress, options: SpamdClientOptions = {}) {
    this.address =
      typeof address === 'string' ? parseSpamdAddress(address) : checkSpamdAddress({ ...address });
    this.addressText = formatSpamdAddress(this.address);
    for (const key of ['timeoutMs', 'connectTimeoutMs', 'writeChunkBytes', 'maxResponseBytes'] as const) {
      const v = options[key];
      if (v !== undefined && (!Number.isFinite(v) || v <= 0)) {
        throw new SpamdError(`${key} must be a positive number, not ${v}`, {
          kind: 'input',
          phase: 'prepare',
          address: this.addressText,
          command: '',
        });
      }
    }
    this.#options = definedOnly(options);
  }

  /** PING: resolves when spamd answers PONG. */
  async ping(opts: Pick<RequestOptions, 'timeoutMs' | 'connectTimeoutMs'> = {}): Promise<PingResult> {
    const raw = await this.request('PING', undefined, opts);
    if (raw.message !== 'PONG')
      throw this.#protocol('PING', `expected PONG, got ${JSON.stringify(raw.message)}`);
    return { version: raw.version, raw };
  }

  /** CHECK: the verdict only. */
  async check(message: SpamdMessage, opts: RequestOptions = {}): Promise<CheckResult> {
    return this.#verdict('CHECK', message, opts);
  }

  /** SYMBOLS: the verdict and the names of the rules that hit. */
  async symbols(message: SpamdMessage, opts: RequestOptions = {}): Promise<SymbolsResult> {
    const r = await this.#verdict('SYMBOLS', message, opts);
    return { ...r, symbols: parseSymbols(r.raw.body.toString('utf8')) };
  }

  /** REPORT: the verdict and SpamAssassin's report text. */
  async report(message: SpamdMessage, opts: RequestOptions = {}): Promise<ReportResult> {
    const r = await this.#verdict('REPORT', message, opts);
    return { ...r, report: r.raw.body.toString('utf8') };
  }

  /** REPORT_IFSPAM: the verdict, and the report text only when the message is spam. */
  async reportIfSpam(message: SpamdMessage, opts: RequestOptions = {}): Promise<SpamdResult> {
    const r = await this.#verdict('REPORT_IFSPAM', message, opts);
    return r.raw.body.length > 0 ? { ...r, report: r.raw.body.toString('utf8') } : r;
  }

  /** HEADERS: the verdict and the rewritten header block (with X-Spam-*), without the body. */
  async headers(message: SpamdMessage, opts: RequestOptions = {}): Promise<HeadersResult> {
    const r = await this.#verdict('HEADERS', message, opts);
    return { ...r, headers: r.raw.body.toString('utf8') };
  }

  /** PROCESS: the verdict and the whole rewritten message. Never truncated (see maxSize). */
  async process(message: SpamdMessage, opts: RequestOptions = {}): Promise<ProcessResult> {
    const r = await this.#verdict('PROCESS', message, opts);
    return { ...r, message: r.raw.body };
  }

  /**
   * TELL: learn (set: ['local'] with messageClass), forget (remove: ['local']), report or revoke
   * ('remote'). spamd must run with --allow-tell, else this rejects with code 69 EX_UNAVAILABLE.
   */
  async tell(message: SpamdMessage, opts: TellOptions): Promise<TellResult> {
    const { messageClass, set = [], remove = [] } = opts;
    const bad = (why: string) =>
      new SpamdError(`TELL: ${why}`, {
        kind: 'input',
        phase: 'prepare',
        address: this.addressText,
        command: 'TELL',
      });
    const targets = [...set, ...remove];
    if (targets.length === 0) throw bad('give set and/or remove');
    if (targets.some((t) => t !== 'local' && t !== 'remote')) throw bad("targets are 'local' and 'remote'");
    if (messageClass !== undefined && messageClass !== 'spam' && messageClass !== 'ham') {
      throw bad("messageClass is 'spam' or 'ham'");
    }
    if (set.length && !messageClass) throw bad('set needs a messageClass (spamd would learn it as ham)');
    for (const t of set) if (remove.includes(t)) throw bad(`cannot set and remove ${t} at once`);
    const { ex, raw } = await this.#exchange({
      command: 'TELL',
      message,
      opts,
      tell: { messageClass, set, remove },
    });
    return {
      didSet: parseTellTargets(raw.headers['didset']),
      didRemove: parseTellTargets(raw.headers['didremove']),
      truncated: ex.truncated,
      raw,
    };
  }

  /**
   * Any command, for the raw response. Rejects with kind 'server' when spamd's code is not 0.
   * `message` is required for every command but PING.
   */
  async request(
    command: SpamdCommand,
    message?: SpamdMessage,
    opts: RequestOptions = {},
  ): Promise<SpamdResponse> {
    return (await this.#exchange({ command, message, opts })).raw;
  }

  async #verdict(command: SpamdCommand, message: SpamdMessage, opts: RequestOptions): Promise<SpamdResult> {
    const { ex, raw } = await this.#exchange({ command, message, opts });
    const spam = raw.headers['spam'];
    const verdict = spam === undefined ? undefined : parseSpamHeader(spam);
    if (!verdict) {
      throw this.#protocol(
        command,
        spam === undefined ? 'no Spam: header' : `Spam: header ${JSON.stringify(spam)}`,
      );
    }
    return { ...verdict, truncated: ex.truncated, raw };
  }

  #protocol(command: SpamdCommand, what: string): SpamdError {
    return new SpamdError(`spamd at ${this.addressText} sent a bad response to ${command}: ${what}`, {
      kind: 'protocol',
      phase: 'receive',
      address: this.addressText,
      command,
    });
  }

  async #exchange(x: Exchange): Promise<{ ex: { truncated: boolean }; raw: SpamdResponse }> {
    const o = { ...DEFAULTS, ...this.#options, ...definedOnly(x.opts) };
    const address = this.addressText;
    const ctx = { command: x.command, address };
    let body: PreparedBody | undefined;
    if (x.command !== 'PING') {
      if (x.message === undefined) {
        throw new SpamdError(`${x.command} needs a message`, { kind: 'input', phase: 'prepare', ...ctx });
      }
      body = prepareBody(x.message, { maxSize: o.maxSize, truncate: o.truncate }, ctx);
    }
    let head: Buffer;
    try {
      head = buildRequestHead({
        command: x.command,
        contentLength: body?.length,
        user: x.command === 'PING' ? undefined : o.user,
        ...x.tell,
        address,
      });
    } catch (err) {
      body?.destroy();
      throw err;
    }
    const raw = await this.#send(x.command, head, body, o);
    return { ex: { truncated: body?.truncated ?? false }, raw };
  }

  #send(
    command: SpamdCommand,
    head: Buffer,
    body: PreparedBody | undefined,
    o: typeof DEFAULTS & SpamdClientOptions,
  ): Promise<SpamdResponse> {
    const address = this.addressText;
    const started = Date.now();
    return new Promise<SpamdResponse>((resolve, reject) => {
      let settled = false;
      let phase: SpamdPhase = 'connect';
      let written = false;
      const parser = new ResponseParser({ command, address, maxResponseBytes: o.maxResponseBytes });
      const socket =
        'socketPath' in this.address
          ? net.connect({ path: this.address.socketPath })
          : net.connect({ host: this.address.host, port: this.address.port });

      const settle = () => {
        settled = true;
        clearTimeout(totalTimer);
        clearTimeout(connectTimer);
        socket.destroy();
        if (!written) body?.destroy();
      };
      const fail = (err: SpamdError) => {
        if (settled) return;
        settle();
        reject(err);
      };
      const succeed = (res: SpamdResponse) => {
        if (settled) return;
        settle();
        if (res.code === 0) return resolve(res);
        reject(
          new SpamdError(`spamd at ${address} refused ${command}: ${res.code} ${res.message}`, {
            kind: 'server',
            phase,
            address,
            command,
            code: res.code,
          }),
        );
      };
      const error = (kind: SpamdError['kind'], message: string, cause?: unknown) =>
        new SpamdError(message, { kind, phase, address, command, cause });

      const totalTimer = setTimeout(() => {
        const where =
          phase === 'connect'
            ? 'connecting'
            : phase === 'send'
              ? 'sending the message'
              : 'waiting for the response';
        fail(
          error('timeout', `spamd at ${address}: ${command} timed out after ${o.timeoutMs} ms (${where})`),
        );
      }, o.timeoutMs);
      const connectMs = Math.min(o.connectTimeoutMs, o.timeoutMs);
      const connectTimer = setTimeout(
        () => fail(error('timeout', `could not connect to spamd at ${address} within ${connectMs} ms`)),
        connectMs,
      );

      socket.once('connect', () => {
        clearTimeout(connectTimer);
        phase = 'send';
        if (!('socketPath' in this.address)) socket.setNoDelay(true);
        writeRequest(
          socket,
          head,
          body,
          { chunkBytes: o.writeChunkBytes, stopped: () => settled },
          { command, address },
        )
          .then(() => {
            written = true;
            if (phase === 'send') phase = 'receive';
          })
          .catch((err: unknown) => {
            if (settled || err instanceof Stopped) return;
            if (err instanceof SpamdError) return fail(err);
            fail(error('input', `reading the message to send to spamd failed: ${String(err)}`, err));
          });
      });
      socket.on('data', (chunk: Buffer) => {
        if (settled) return;
        try {
          const res = parser.push(chunk);
          if (res) succeed(res);
        } catch (err) {
          fail(err as SpamdError);
        }
      });
      socket.on('end', () => {
        if (settled) return;
        try {
          succeed(parser.end());
        } catch (err) {
          fail(err as SpamdError);
        }
      });
      socket.on('error', (err: NodeJS.ErrnoException) => {
        if (phase === 'connect') {
          fail(error('connect', `could not connect to spamd at ${address}: ${err.code ?? err.message}`, err));
        } else {
          const got = parser.received ? ` after ${parser.received} response bytes` : '';
          fail(
            error(
              'closed',
              `connection to spamd at ${address} failed${got}: ${err.code ?? err.message}`,
              err,
            ),
          );
        }
      });
      socket.on('close', () => {
        if (settled) return;
        fail(error('closed', `spamd at ${address} closed the connection after ${Date.now() - started} ms`));
      });
    });
  }
}

function definedOnly<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
