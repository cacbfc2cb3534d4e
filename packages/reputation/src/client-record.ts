/**
 * client-record: reading postscreen's per-client record. Exports passOld (every enabled test has an
 * unexpired pass: PASS OLD, hand off at once), validPasses (the tests still valid at `now`),
 * and dnswlTrusted.
 */
import type { ClientRecord } from './types.js';

/** postscreen's PASS OLD: every enabled test has a pass that has not expired. */
export function passOld(record: ClientRecord | undefined, tests: readonly string[], now: number): boolean {
  if (record === undefined) return false;
  return tests.every((test) => {
    const pass = record.passes[test];
    return pass !== undefined && pass.expiresAt > now;
  });
}

/** The tests whose pass still holds at `now`. */
export function validPasses(record: ClientRecord | undefined, now: number): string[] {
  if (record === undefined) return [];
  return Object.entries(record.passes)
    .filter(([, pass]) => pass.expiresAt > now)
    .map(([test]) => test);
}

/** True while DNSWL trust recorded for the client holds. */
export function dnswlTrusted(record: ClientRecord | undefined, now: number): boolean {
  return record?.dnswlTrust !== undefined && record.dnswlTrust.expiresAt > now;
}
