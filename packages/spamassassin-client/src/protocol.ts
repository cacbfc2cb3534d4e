/**
 * protocol: the bytes of SPAMC/1.5, with no I/O. Exports the command list (SPAMD_COMMANDS), the
 * request builder (buildRequestHead: request line and headers, never a Compress: header), the
 * incremental response parser (ResponseParser: feed it chunks as they arrive, get one SpamdResponse
 * back once it is complete), and parseSpamHeader / parseSymbols / parseTellTargets for the values.
 * Promises: the parser accepts any chunking of the same bytes and gives the same result; anything it
 * cannot read as SPAMD/1.x is a SpamdError of kind 'protocol', and a stream that ends before a whole
 * response is a SpamdError of kind 'closed'.
 */
import { exitCodeName, SpamdError } from './errors.js';

export const SPAMD_COMMANDS = [
  'CHECK',
  'SYMBOLS',
  'REPORT',
  'REPORT_IFSPAM',
  'HEADERS',
  'PROCESS',
  'PING',
  'TELL',
] as const;
export type SpamdCommand = (typeof SPAMD_COMMANDS)[number];

/** The protocol version this client speaks. */
export const SPAMC_VERSION = '1.5';

/** Where a TELL request learns (local: Bayes) or reports (remote: Razor, Pyzor, SpamCop...). */
export type TellTarget = 'local' | 'remote';

/** Commands whose successful response carries a body (after the blank line). */
const BODY_COMMANDS: ReadonlySet<SpamdCommand> = new Set([
  'SYMBOLS',
  'REPORT',
  'REPORT_IFSPAM',
  'HEADERS',
  'PROCESS',
]);

export interface RequestHead {
  command: SpamdCommand;
  /** Bytes of the message that follow; omitted for PING. */
  contentLength?: number;
  /** `User:`: whose preferences spamd applies. */
  user?: string;
  /** TELL only. */
  messageClass?: 'spam' | 'ham';
  /** TELL only: `Set: local,remote`. */
  set?: readonly TellTarget[];
  /** TELL only: `Remove: local,remote`. */
  remove?: readonly TellTarget[];
  /** For error messages only. */
  address?: string;
}

/** A header value spamd accepts: no control characters (spamd refuses them in User:). */
function headerValue(name: string, value: string, head: RequestHead): string {
  const control = [...value].some((c) => c.charCodeAt(0) < 0x20 || c.charCodeAt(0) === 0x7f);
  if (control || value.length === 0 || value.trim() !== value) {
    throw new SpamdError(`invalid ${name}: header value ${JSON.stringify(value)}`, {
      kind: 'input',
      phase: 'prepare',
      address: head.address ?? '',
      command: head.command,
    });
  }
  return value;
}

/**
 * The request line and headers, ending with the blank line. PING gets no Content-length (spamc -K
 * sends none either); every other command gets one, since spamd reads the body by it.
 */
export function buildRequestHead(head: RequestHead): Buffer {
  const lines = [`${head.command} SPAMC/${SPAMC_VERSION}`];
  if (head.command !== 'PING') {
    const n = head.contentLength ?? 0;
    if (!Number.isSafeInteger(n) || n < 0) {
      throw new SpamdError(`invalid Content-length ${n}`, {
        kind: 'input',
        phase: 'prepare',
        address: head.address ?? '',
        command: head.command,
      });
    }
    lines.push(`Content-length: ${n}`);
  }
  if (head.user !== undefined) lines.push(`User: ${headerValue('User', head.user, head)}`);
  if (head.messageClass !== undefined) lines.push(`Message-class: ${head.messageClass}`);
  if (head.set?.length) lines.push(`Set: ${head.set.join(',')}`);
  if (head.remove?.length) lines.push(`Remove: ${head.remove.join(',')}`);
  return Buffer.from(`${lines.join('\r\n')}\r\n\r\n`, 'latin1');
}

/** One whole spamd response. */
export interface SpamdResponse {
  /** Protocol version of the status line: '1.1' for results, '1.5' for PONG, '1.0' for errors. */
  version: string;
  /** 0 (EX_OK) or a sysexits code. */
  code: number;
  /** 'EX_OK', 'EX_UNAVAILABLE'... */
  codeName: string;
  /** The rest of the status line: 'EX_OK', 'PONG', or spamd's error text. */
  message: string;
  /** Response headers, names lower-cased ('spam', 'content-length', 'didset'). */
  headers: Record<string, string>;
  /** The exact body bytes (empty for CHECK, PING, TELL and errors). */
  body: Buffer;
}

export interface ResponseParserOptions {
  /** The command the response answers: decides whether a body follows. */
  command: SpamdCommand;
  /** Refuse a body larger than this (kind 'protocol'). Default 64 MiB. */
  maxResponseBytes?: number;
  /** For error messages only. */
  address?: string;
}

const MAX_HEAD_BYTES = 64 * 1024;
const MAX_HEADERS = 256;
const CR = 0x0d;
const LF = 0x0a;

type State = 'status' | 'headers' | 'body' | 'body-to-eof' | 'done';

/**
 * Parses one response from its chunks. push() returns the response once complete (later bytes are
 * ignored); end() is for the end of the stream and returns the response, or throws kind 'closed'.
 */
export class ResponseParser {
  readonly #command: SpamdCommand;
  readonly #maxBytes: number;
  readonly #address: string;
  #state: State = 'status';
  #buffer: Buffer = Buffer.alloc(0);
  #received = 0;
  #bodyLength = 0;
  #bodyParts: Buffer[] = [];
  #bodyBytes = 0;
  #response: SpamdResponse | undefined;
  #partial: Omit<SpamdResponse, 'body'> | undefined;

  constructor(opts: ResponseParserOptions) {
    this.#command = opts.command;
    this.#maxBytes = opts.maxResponseBytes ?? 64 * 1024 * 1024;
    this.#address = opts.address ?? '';
  }

  /** True once a whole response has been read. */
  get complete(): boolean {
    return this.#state === 'done';
  }

  /** Bytes fed so far. */
  get received(): number {
    return this.#received;
  }

  push(chunk: Buffer): SpamdResponse | undefined {
    if (this.#state === 'done') return this.#response;
    this.#received += chunk.length;
    if (this.#inBody()) return this.#takeBody(chunk);
    this.#buffer = this.#buffer.length ? Buffer.concat([this.#buffer, chunk]) : chunk;
    for (;;) {
      const lf = this.#buffer.indexOf(LF);
      if (lf === -1) {
        if (this.#buffer.length > MAX_HEAD_BYTES)
          throw this.#error(`no line end within ${MAX_HEAD_BYTES} bytes`);
        return undefined;
      }
      const end = lf > 0 && this.#buffer[lf - 1] === CR ? lf - 1 : lf;
      const line = this.#buffer.subarray(0, end).toString('latin1');
      const rest = this.#buffer.subarray(lf + 1);
      this.#buffer = rest;
      const done = this.#state === 'status' ? this.#statusLine(line) : this.#headerLine(line);
      if (done) return this.#response;
      if (this.#inBody()) {
        this.#buffer = Buffer.alloc(0);
        return this.#takeBody(rest);
      }
    }
  }

  /** The stream ended: the response if it is complete (or its body runs to the end), else kind 'closed'. */
  end(): SpamdResponse {
    if (this.#state === 'done' && this.#response) return this.#response;
    if (this.#state === 'body-to-eof' && this.#partial) return this.#finish();
    const where =
      this.#received === 0
        ? 'before any response'
        : this.#state === 'body'
          ? `after ${this.#bodyBytes} of ${this.#bodyLength} body bytes`
          : this.#state === 'headers'
            ? 'in the response headers'
            : 'in the status line';
    throw new SpamdError(`spamd at ${this.#address} closed the connection ${where}`, {
      kind: 'closed',
      phase: 'receive',
      address: this.#address,
      command: this.#command,
    });
  }

  #inBody(): boolean {
    return this.#state === 'body' || this.#state === 'body-to-eof';
  }

  #error(what: string): SpamdError {
    return new SpamdError(`spamd at ${this.#address} sent a bad response to ${this.#command}: ${what}`, {
      kind: 'protocol',
      phase: 'receive',
      address: this.#address,
      command: this.#command,
    });
  }

  /** Returns true when the response is complete. */
  #statusLine(line: string): boolean {
    const m = /^SPAMD\/(\d+\.\d+)[ \t]+(\d+)(?:[ \t]+(.*))?$/.exec(line);
    if (!m) throw this.#error(`status line ${JSON.stringify(line.slice(0, 120))}`);
    const code = Number(m[2]);
    this.#partial = {
      version: m[1]!,
      code,
      codeName: exitCodeName(code),
      message: (m[3] ?? '').trim(),
      headers: {},
    };
    // Errors are one line (spamd's protocol_error / service_unavailable_error); so is PONG.
    if (code !== 0 || this.#command === 'PING') {
      this.#finish();
      return true;
    }
    this.#state = 'headers';
    return false;
  }

  #headerLine(line: string): boolean {
    const partial = this.#partial!;
    if (line === '') {
      const clen = partial.headers['content-length'];
      if (clen !== undefined) {
        if (!/^\d+$/.test(clen)) throw this.#error(`Content-length ${JSON.stringify(clen)}`);
        this.#bodyLength = Number(clen);
        if (this.#bodyLength > this.#maxBytes) {
          throw this.#error(`Content-length ${this.#bodyLength} is over maxResponseBytes ${this.#maxBytes}`);
        }
        if (this.#bodyLength === 0) {
          this.#finish();
          return true;
        }
        this.#state = 'body';
        return false;
      }
      if (BODY_COMMANDS.has(this.#command)) {
        this.#state = 'body-to-eof';
        return false;
      }
      this.#finish();
      return true;
    }
    if (Object.keys(partial.headers).length >= MAX_HEADERS) throw this.#error('too many headers');
    const m = /^([!-9;-~]+):[ \t]*(.*)$/.exec(line);
    if (!m) throw this.#error(`header line ${JSON.stringify(line.slice(0, 120))}`);
    partial.headers[m[1]!.toLowerCase()] = m[2]!.trim();
    return false;
  }

  #takeBody(chunk: Buffer): SpamdResponse | undefined {
    if (this.#state === 'body') {
      const need = this.#bodyLength - this.#bodyBytes;
      const part = chunk.length > need ? chunk.subarray(0, need) : chunk;
      if (part.length) this.#bodyParts.push(part);
      this.#bodyBytes += part.length;
      return this.#bodyBytes >= this.#bodyLength ? this.#finish() : undefined;
    }
    if (chunk.length) this.#bodyParts.push(chunk);
    this.#bodyBytes += chunk.length;
    if (this.#bodyBytes > this.#maxBytes) throw this.#error(`body over maxResponseBytes ${this.#maxBytes}`);
    return undefined;
  }

  #finish(): SpamdResponse {
    const body = this.#bodyParts.length === 1 ? this.#bodyParts[0]! : Buffer.concat(this.#bodyParts);
    this.#response = { ...this.#partial!, body };
    this.#state = 'done';
    this.#buffer = Buffer.alloc(0);
    this.#bodyParts = [];
    return this.#response;
  }
}

/** The verdict in a `Spam:` header. */
export interface SpamVerdict {
  isSpam: boolean;
  score: number;
  threshold: number;
}

/**
 * `True ; 1000.0 / 5.0` (CHECK and most commands) or `Yes ; 7.4 / 5.0` (REPORT_IFSPAM) to a
 * verdict; undefined when the value is not in that form.
 */
export function parseSpamHeader(value: string): SpamVerdict | undefined {
  const m = /^(True|False|Yes|No)[ \t]*;[ \t]*(-?\d+(?:\.\d+)?)[ \t]*\/[ \t]*(-?\d+(?:\.\d+)?)$/i.exec(
    value.trim(),
  );
  if (!m) return undefined;
  const flag = m[1]!.toLowerCase();
  // '-0.0' is a score of 0, not -0.
  return {
    isSpam: flag === 'true' || flag === 'yes',
    score: Number(m[2]) || 0,
    threshold: Number(m[3]) || 0,
  };
}

/** The SYMBOLS body (`GTUBE,MSGID_SHORT,NO_RECEIVED`) to rule names. */
export function parseSymbols(body: string): string[] {
  return body
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
}

/** A `DidSet:` / `DidRemove:` value (`local,remote`) to its targets; [] when absent. */
export function parseTellTargets(value: string | undefined): TellTarget[] {
  if (!value) return [];
  return value
    .split(',')
    .map((s) => s.trim().toLowerCase())
    .filter((s): s is TellTarget => s === 'local' || s === 'remote');
}
