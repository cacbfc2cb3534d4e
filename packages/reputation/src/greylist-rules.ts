/**
 * greylist-rules: Postgrey's decision for one triplet and one AWL entry, as pure functions of the
 * stored state and the clock. SqliteStore runs them inside one IMMEDIATE transaction; RedisStore's
 * Lua scripts (redis-scripts.ts) are a line-by-line transcription, and the shared test suite holds
 * both to the same answers. Exports decideTriplet, decideAwlBump, awlCurrentCount, TripletState.
 *
 * The rules (Postgrey 1.3x, smtpd_access_policy):
 * - no record, or a record unseen for longer than max-age: first-seen = now, defer reason 'new';
 * - first-seen in the future (clock changed): corrected to now, which starts over ('new');
 * - never passed and now - first-seen > retry window: first-seen = now, starts over ('new');
 * - now - first-seen < delay: defer 'early-retry' with the seconds still missing;
 * - otherwise pass 'triplet found'; firstPass only when it never passed before (X-Greylist once).
 * Postgrey derives "passed" from last - first >= delay; we store it, which gives the same answers
 * for a fixed delay and lets maintenance work without knowing the delay.
 * An operator approval (approvedUntil >= now) makes the next check pass as a first pass.
 * A client skips the triplet (greylistLookup) when screen trusts it (clientTrust: DNSWL trust with a
 * negative score, or every chosen test passed and unexpired) or when its AWL count reached the
 * threshold.
 */
import { dnswlTrusted, passOld } from './client-record.js';
import { AWL_INTERVAL_MS, type ClientRecord, type GreylistResult } from './types.js';

export interface TripletState {
  firstSeen: number;
  lastSeen: number;
  passed: boolean;
  /** 0 when not approved. */
  approvedUntil: number;
}

export interface TripletDecision {
  result: GreylistResult;
  next: TripletState;
}

export function decideTriplet(
  prev: TripletState | undefined,
  now: number,
  delayMs: number,
  retryWindowMs: number,
  maxAgeMs: number,
): TripletDecision {
  const approved = prev !== undefined && prev.approvedUntil >= now;
  let first = now;
  let startOver = true;
  let wasPassed = false;
  if (prev !== undefined && (approved || now - prev.lastSeen <= maxAgeMs)) {
    wasPassed = prev.passed;
    first = prev.firstSeen;
    startOver = false;
    if (first > now) {
      // Postgrey: first-seen in the future is corrected to now.
      first = now;
      startOver = !wasPassed && !approved;
    } else if (!wasPassed && !approved && now - first > retryWindowMs) {
      // The first successful retry came after the retry window: start over.
      first = now;
      startOver = true;
    }
  }
  const elapsed = now - first;
  if (wasPassed || approved || elapsed >= delayMs) {
    return {
      result: {
        action: 'pass',
        reason: 'triplet found',
        firstPass: !wasPassed,
        delayedSeconds: Math.floor(elapsed / 1000),
      },
      next: { firstSeen: first, lastSeen: now, passed: true, approvedUntil: 0 },
    };
  }
  const secondsLeft = Math.ceil((delayMs - elapsed) / 1000);
  return {
    result: startOver
      ? { action: 'defer', reason: 'new', secondsLeft }
      : { action: 'defer', reason: 'early-retry', secondsLeft },
    next: { firstSeen: first, lastSeen: now, passed: false, approvedUntil: 0 },
  };
}

export interface AwlState {
  count: number;
  lastSeen: number;
}

/** The count an AWL entry stands at now: 0 when absent or unbumped for longer than max-age. */
export function awlCurrentCount(prev: AwlState | undefined, now: number, maxAgeMs: number): number {
  return prev !== undefined && now - prev.lastSeen <= maxAgeMs ? prev.count : 0;
}

/** Postgrey: count once per hour at most. `next` is undefined when nothing changes. */
export function decideAwlBump(
  prev: AwlState | undefined,
  now: number,
  maxAgeMs: number,
): { count: number; next: AwlState | undefined } {
  const live = prev !== undefined && now - prev.lastSeen <= maxAgeMs ? prev : undefined;
  if (live !== undefined && now < live.lastSeen + AWL_INTERVAL_MS)
    return { count: live.count, next: undefined };
  const count = (live?.count ?? 0) + 1;
  return { count, next: { count, lastSeen: now } };
}

/** Why screen's record lets the client skip greylisting, or undefined. `tests` empty: DNSWL only. */
export function clientTrust(
  record: ClientRecord | undefined,
  now: number,
  tests: readonly string[],
): 'dnswl' | 'screen' | undefined {
  if (record === undefined) return undefined;
  if (dnswlTrusted(record, now) && record.dnswlTrust!.score < 0) return 'dnswl';
  if (tests.length > 0 && passOld(record, tests, now)) return 'screen';
  return undefined;
}
