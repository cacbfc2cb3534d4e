/**
 * texts: the fixed reply and log texts, in postscreen's and dnsblog's words. Exports replyText
 * (`550 5.7.1 Service unavailable; client [ip] blocked using <zone>`; 521 for the drop action),
 * rankLine (`DNSBL rank <n> for [ip]:port`), listedLine (`addr <ip> listed by domain <zone> as
 * <answer>`) and the warning texts for broken zones.
 */
import type { ErrorKind } from './resolver.js';

/** Used when a result has no positive contribution to name (a threshold of 0 or below). */
export const UNKNOWN_ZONE = 'DNSBL';

/**
 * The reject reply for a blocked client. `zone` is a result's listedBy (the reply-mapped zone with the
 * largest positive weight) or a plain zone name.
 */
export function replyText(ip: string, zone: string | { listedBy?: string }, code: 550 | 521 = 550): string {
  const name = typeof zone === 'string' ? zone : (zone.listedBy ?? UNKNOWN_ZONE);
  return `${code} 5.7.1 Service unavailable; client [${ip}] blocked using ${name}`;
}

/** postscreen's log line for a score at or over the threshold. */
export function rankLine(score: number, ip: string, port: number | string): string {
  return `DNSBL rank ${score} for [${ip}]:${port}`;
}

/** dnsblog's log line for a zone that answered. */
export function listedLine(ip: string, zone: string, answers: readonly string[]): string {
  return `addr ${ip} listed by domain ${zone} as ${answers.join(' ')}`;
}

export function errorCodeReason(answer: string, ip?: string): string {
  return ip === undefined
    ? `answered ${answer} (an error code: over quota or refused resolver)`
    : `answered ${answer} for ${ip} (an error code: over quota or refused resolver)`;
}

export function testPointReason(point: string, problem: 'not listed' | 'listed' | ErrorKind): string {
  if (problem === 'not listed') return `test point ${point} is not listed`;
  if (problem === 'listed') return `test point ${point} is listed`;
  return `test point ${point} lookup failed: ${problem}`;
}

export function brokenLine(zone: string, reason: string): string {
  return `warning: dnsbl zone ${zone} is not used: ${reason}`;
}

export function recoveredLine(zone: string): string {
  return `dnsbl zone ${zone} passed its test points and is used again`;
}

export function lookupErrorLine(zone: string, ip: string, kind: ErrorKind, code: string): string {
  return `warning: dnsblog_query: lookup error for ${ip} in domain ${zone}: ${kind} (${code})`;
}
