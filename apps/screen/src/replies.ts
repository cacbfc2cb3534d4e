/**
 * replies: every reply text screen sends and every log text it writes, in one table, in postscreen's
 * words, so operators can grep for the same strings they grep for today. Replies carry no CRLF; the
 * writer adds it. Exports replies, logText, escapeBytes, secs and the Action/Test types.
 */
import type { SCREEN_TESTS } from '@moat/config';
import { replyText as dnsblReply } from '@moat/dnsbl';

export type Action = 'ignore' | 'enforce' | 'drop';

/** The tests screen runs, by the names they have in the reputation store (greylist.trustScreenTests). */
export type TestName = (typeof SCREEN_TESTS)[number];
export const EARLY_TESTS = ['pregreet', 'dnsbl'] as const;
export const DEEP_TESTS = ['pipelining', 'non_smtp_command', 'bare_newline'] as const;
export type DeepTest = (typeof DEEP_TESTS)[number];

export const replies = {
  /** The enforce engine's 550 at RCPT and the drop action's 521, per failed test. */
  pregreet: { enforce: '550 5.5.1 Protocol error', drop: '521 5.5.1 Protocol error' },
  access: {
    enforce: '550 5.3.2 Service currently unavailable',
    drop: '521 5.3.2 Service currently unavailable',
  },
  dnsbl: (ip: string, zone: string | undefined, action: 'enforce' | 'drop') =>
    dnsblReply(ip, { listedBy: zone }, action === 'drop' ? 521 : 550),
  pipelining: { enforce: '550 5.5.1 Protocol error', drop: '521 5.5.1 Protocol error' },
  non_smtp_command: {
    enforce: '550 5.5.1 Protocol error',
    drop: '521 5.7.0 Error: I can break rules, too. Goodbye.',
  },
  bare_newline: { enforce: '550 5.5.1 Protocol error', drop: '521 5.5.1 Protocol error' },

  // limits
  tooManyConnections: '421 4.7.0 Error: too many connections',
  screeningBusy: '421 4.3.2 All screening ports are busy',
  serverBusy: '421 4.3.2 All server ports are busy',

  // the enforce engine (postscreen_smtpd.c)
  greeting: (banner: string) => `220 ${banner}`,
  teaser: (banner: string) => `220-${banner}`,
  ehlo: (hostname: string) => [
    `250-${hostname}`,
    '250-SIZE',
    '250-ENHANCEDSTATUSCODES',
    '250-8BITMIME',
    '250 SMTPUTF8',
  ],
  helo: (hostname: string) => `250 ${hostname}`,
  ehloSyntax: '501 5.5.2 Syntax: EHLO hostname',
  heloSyntax: '501 5.5.2 Syntax: HELO hostname',
  ok: '250 2.0.0 Ok',
  mailOk: '250 2.1.0 Ok',
  nestedMail: '503 5.5.1 Error: nested MAIL command',
  needMail: '503 5.5.1 Error: need MAIL command',
  needRcpt: '503 5.5.1 Error: need RCPT command',
  noValidRecipients: '554 5.5.1 Error: no valid recipients',
  mailSyntax: '501 5.5.4 Syntax: MAIL FROM:<address>',
  rcptSyntax: '501 5.5.4 Syntax: RCPT TO:<address>',
  vrfyDisabled: '502 5.5.1 VRFY command is disabled',
  unknownCommand: '502 5.5.2 Error: command not recognized',
  bye: '221 2.0.0 Bye',
  tooLong: '521 5.5.1 Error: command too long',
  tooManyCommands: (hostname: string) => `421 4.7.0 ${hostname} Error: too many commands`,
  timeLimit: (hostname: string) => `421 4.4.2 ${hostname} Error: timeout exceeded`,
} as const;

/** Seconds as postscreen prints them ("0.05", "1.20"). */
export function secs(ms: number): string {
  return (ms / 1000).toFixed(2);
}

/** C-style escaping of the first `max` bytes (postscreen logs pregreet text this way). */
export function escapeBytes(buf: Buffer, max = 100): string {
  let out = '';
  const n = Math.min(buf.length, max);
  for (let i = 0; i < n; i++) {
    const b = buf[i]!;
    if (b === 0x0d) out += '\\r';
    else if (b === 0x0a) out += '\\n';
    else if (b === 0x09) out += '\\t';
    else if (b === 0x5c) out += '\\\\';
    else if (b < 0x20 || b >= 0x7f) out += '\\' + b.toString(8).padStart(3, '0');
    else out += String.fromCharCode(b);
  }
  return out;
}

/** Log message texts (postscreen's words). `who` is `[ip]:port`. */
export const logText = {
  connect: (who: string, to: string) => `CONNECT from ${who} to ${to}`,
  allowlisted: (who: string) => `ALLOWLISTED ${who}`,
  denylisted: (who: string) => `DENYLISTED ${who}`,
  passNew: (who: string) => `PASS NEW ${who}`,
  passOld: (who: string) => `PASS OLD ${who}`,
  pregreet: (count: number, ms: number, who: string, text: string) =>
    `PREGREET ${count} after ${secs(ms)} from ${who}: ${text}`,
  dnsblRank: (score: number, who: string) => `DNSBL rank ${score} for ${who}`,
  hangup: (ms: number, who: string, where: string) => `HANGUP after ${secs(ms)} from ${who} in ${where}`,
  disconnect: (who: string) => `DISCONNECT ${who}`,
  pipelining: (who: string, after: string, text: string) =>
    `COMMAND PIPELINING from ${who} after ${after}: ${text}`,
  nonSmtp: (who: string, after: string, text: string) =>
    `NON-SMTP COMMAND from ${who} after ${after}: ${text}`,
  bareNewline: (who: string, after: string) => `BARE NEWLINE from ${who} after ${after}`,
  noqueue: (who: string, reply: string, from: string, to: string, proto: string, helo: string) =>
    `NOQUEUE: reject: RCPT from ${who}: ${reply}; from=<${from}>, to=<${to}>, proto=${proto}, helo=<${helo}>`,
  tooManyConnections: (who: string) => `NOQUEUE: reject: CONNECT from ${who}: too many connections`,
  screeningBusy: (who: string) => `NOQUEUE: reject: CONNECT from ${who}: all screening ports busy`,
  commandCountLimit: (who: string, after: string) => `COMMAND COUNT LIMIT from ${who} after ${after}`,
  commandTimeLimit: (who: string, after: string) => `COMMAND TIME LIMIT from ${who} after ${after}`,
  commandLengthLimit: (who: string, after: string) => `COMMAND LENGTH LIMIT from ${who} after ${after}`,
  cacheDown: 'warning: reputation store unavailable: screening without the pass cache',
} as const;
