/**
 * replies: the SMTP reply type every hop uses, and the listener's own reply table.
 *
 * A Reply is a code and its lines, each line carrying its enhanced status code ("5.7.1 ..."), so a
 * reply relayed from the next hop is passed on byte for byte and one of ours reads the same way.
 * Texts are fixed strings so operators can grep logs for years; the one table per concern rule means
 * the same condition always gets the same words.
 */
import type { Logger } from '@moat/log';

export interface Reply {
  code: number;
  /** Text after "code-"/"code ", enhanced status code included. */
  lines: string[];
}

export function reply(code: number, enhanced: string, text: string): Reply {
  return { code, lines: [`${enhanced} ${text}`] };
}

/** "550 5.7.1 text" (continuation lines with "-"), without the final CRLF. */
export function formatReply(r: Reply): string {
  return r.lines.map((line, i) => `${r.code}${i < r.lines.length - 1 ? '-' : ' '}${line}`).join('\r\n');
}

export function isPositive(r: Reply): boolean {
  return r.code >= 200 && r.code < 400;
}

/** An error that carries the reply to send; thrown or returned by handlers. */
export class SmtpError extends Error {
  readonly responseCode: number;
  constructor(readonly reply: Reply) {
    super(reply.lines.join('\n'));
    this.name = 'SmtpError';
    this.responseCode = reply.code;
  }
}

/** The listener's own replies. Services keep their own tables beside their checks. */
export const listenerReplies = {
  /** A connection to an internal port from outside its peers. 4xx: a wrong peers list must not bounce mail. */
  notAPeer: (address: string) =>
    reply(421, '4.7.0', `Error: access denied for [${address}]: not an allowed peer`),
  /** Our own bug or an unexpected failure: always a try-again. */
  internalError: () => reply(451, '4.3.0', 'Error: internal error, please try again later'),
  messageTooBig: () => reply(552, '5.3.4', 'Message size exceeds fixed limit'),
  /** A handed-over client past its open-connection limit (postscreen's words for the same limit). */
  tooManyConnections: () => reply(421, '4.7.0', 'Error: too many connections'),
  serverBusy: () => reply(421, '4.3.2', 'All server ports are busy'),
  shuttingDown: () => reply(421, '4.3.2', 'Service shutting down, closing transmission channel'),
  /** Postfix's smtpd, word for word: a non-ASCII address in a transaction without MAIL ... SMTPUTF8. */
  utf8Undeclared: () => reply(553, '5.6.7', 'Must declare SMTPUTF8 to send unicode address'),
} as const;

/** Runs a handler, turning throws into 451 4.3.0 (never a 5xx for our own failure). */
export async function guarded(
  logger: Logger,
  what: string,
  fn: () => Promise<Reply | void> | Reply | void,
): Promise<Reply | void> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof SmtpError) return err.reply;
    logger.error({ err, stage: what }, 'handler failed');
    return listenerReplies.internalError();
  }
}
