/**
 * safety: what postscreen lacks. Answers in 127.255.255.0/24 or exactly 127.0.0.255 are the lists'
 * "over quota / refused resolver" codes (Spamhaus 127.255.255.252/254/255, dnswl 127.0.0.255): they
 * never count as a listing, with or without a filter, and put the zone out of use. RFC 5782 test
 * points: every zone must list 127.0.0.2 and must not list 127.0.0.1. Exports isErrorCode,
 * TEST_LISTED and TEST_UNLISTED.
 */

/** True for a DNSBL error code (never a listing). */
export function isErrorCode(address: string): boolean {
  return address.startsWith('127.255.255.') || address === '127.0.0.255';
}

/** Must be listed by every working zone. */
export const TEST_LISTED = '127.0.0.2';
/** Must not be listed by any working zone. */
export const TEST_UNLISTED = '127.0.0.1';
