/**
 * errors: every way a spamd request can fail, as one class. Exports SpamdError (with a `kind`, the
 * request phase, and spamd's own code and code name when spamd answered with one), SpamdErrorKind,
 * SpamdPhase, EX_CODES (spamd's sysexits table) and exitCodeName. Promises: a request never rejects
 * with anything but a SpamdError, so a caller can turn every failure into a 4xx with one `instanceof`.
 */

/**
 * - `connect`: the connection could not be made (refused, no such socket, unreachable).
 * - `timeout`: connectTimeoutMs or timeoutMs ran out; `phase` says where.
 * - `closed`: spamd (or something between) closed or reset the connection before a whole response.
 * - `protocol`: the response was not SPAMD/1.x as documented (bad status line, header, Spam: value).
 * - `server`: spamd answered with a non-zero code (`code`, `codeName`); e.g. 69 EX_UNAVAILABLE.
 * - `too-large`: the message is larger than maxSize and truncation is off; nothing was sent.
 * - `input`: the caller's input is unusable: a stream that failed or did not deliver exactly
 *   `length` bytes, a User: value with control characters, an invalid address.
 */
export type SpamdErrorKind = 'connect' | 'timeout' | 'closed' | 'protocol' | 'server' | 'too-large' | 'input';

/** Where the request was when it failed. */
export type SpamdPhase = 'prepare' | 'connect' | 'send' | 'receive';

/** spamd's response codes (sysexits.h, as in spamd's %resphash). */
export const EX_CODES = {
  0: 'EX_OK',
  64: 'EX_USAGE',
  65: 'EX_DATAERR',
  66: 'EX_NOINPUT',
  67: 'EX_NOUSER',
  68: 'EX_NOHOST',
  69: 'EX_UNAVAILABLE',
  70: 'EX_SOFTWARE',
  71: 'EX_OSERR',
  72: 'EX_OSFILE',
  73: 'EX_CANTCREAT',
  74: 'EX_IOERR',
  75: 'EX_TEMPFAIL',
  76: 'EX_PROTOCOL',
  77: 'EX_NOPERM',
  78: 'EX_CONFIG',
  79: 'EX_TIMEOUT',
} as const satisfies Record<number, string>;

/** The name of a spamd code ('EX_UNAVAILABLE' for 69), or `EX_<code>` for a code not in the table. */
export function exitCodeName(code: number): string {
  return (EX_CODES as Record<number, string>)[code] ?? `EX_${code}`;
}

export interface SpamdErrorDetails {
  kind: SpamdErrorKind;
  phase: SpamdPhase;
  /** 'host:port' or 'unix:/path'. */
  address: string;
  /** The SPAMC command (CHECK, PING...). */
  command: string;
  /** spamd's code, for kind 'server'. */
  code?: number;
  /** The underlying error (ECONNREFUSED, a stream error...). */
  cause?: unknown;
}

/** The one error type a SpamdClient request rejects with. */
export class SpamdError extends Error {
  override readonly name = 'SpamdError';
  readonly kind: SpamdErrorKind;
  readonly phase: SpamdPhase;
  readonly address: string;
  readonly command: string;
  /** spamd's response code when spamd sent one (kind 'server'). */
  readonly code: number | undefined;
  /** 'EX_UNAVAILABLE' etc. when there is a code. */
  readonly codeName: string | undefined;

  constructor(message: string, details: SpamdErrorDetails) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.kind = details.kind;
    this.phase = details.phase;
    this.address = details.address;
    this.command = details.command;
    this.code = details.code;
    this.codeName = details.code === undefined ? undefined : exitCodeName(details.code);
  }
}
