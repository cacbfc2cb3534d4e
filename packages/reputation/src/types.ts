/**
 * types: the ReputationStore interface that screen and greylist program against, the records it
 * returns, and the defaults that follow postscreen and Postgrey. Exports ReputationStore, its
 * record and option types, and the DEFAULT_* constants.
 *
 * Promises, whatever the implementation (SqliteStore, RedisStore):
 * - every method is async, takes an injectable `now` (ms since the epoch) and rejects with a
 *   StoreError (never resolves with a made-up answer) when the store cannot answer in time;
 * - greylistCheck is atomic per key across processes and replicas sharing the store;
 * - durations are milliseconds; the seconds in greylist answers are whole seconds as Postgrey logs.
 */

/** One test's pass, as postscreen keeps it: one expiry per test per client. */
export interface TestPass {
  passedAt: number;
  expiresAt: number;
}

/** DNSWL trust (a negative DNSBL score at or below the allowlist threshold) and until when it holds. */
export interface DnswlTrust {
  score: number;
  recordedAt: number;
  expiresAt: number;
}

/** What the store knows about one client address. Expired entries stay until cleanup drops them. */
export interface ClientRecord {
  ip: string;
  /** Test name (pregreet, dnsbl, pipelining, ...) -> its pass. A failed test has no entry. */
  passes: Record<string, TestPass>;
  dnswlTrust?: DnswlTrust;
  /** Last time anything was recorded for this client. */
  lastSeen: number;
  /** The latest of lastSeen and every expiry: the record is retained until latest + retention. */
  latest: number;
}

export interface CleanupResult {
  /** Client records still held after the run. */
  retained: number;
  /** Client records removed: every entry expired longer ago than the retention time. */
  dropped: number;
  /** True when another process held the cleanup lock, so this call did nothing. */
  skipped: boolean;
}

export interface GreylistParams {
  now?: number;
  /** Postgrey --delay (300 s). */
  delayMs: number;
  /** Postgrey --retry-window (2 days). */
  retryWindowMs: number;
  /** Postgrey --max-age (35 days). */
  maxAgeMs: number;
}

export type GreylistResult =
  | { action: 'defer'; reason: 'new'; secondsLeft: number }
  | { action: 'defer'; reason: 'early-retry'; secondsLeft: number }
  | {
      action: 'pass';
      reason: 'triplet found';
      /** True on the first pass of this triplet only: the caller adds X-Greylist then. */
      firstPass: boolean;
      /** Whole seconds between first-seen and now (X-Greylist's "delayed N seconds"). */
      delayedSeconds: number;
    };

/**
 * Everything greylisting asks the store about one recipient, answered in one step (one transaction,
 * one script): screen's trust in the client, the client AWL, then the triplet. `now` as in
 * GreylistParams; maxAgeMs is also the AWL entries' max age (Postgrey uses one max-age for both).
 */
export interface GreylistQuery extends GreylistParams {
  /** The client's exact address: its screen record and its AWL entry. */
  ip: string;
  /**
   * The triplet. Undefined: the caller keys it only once the client is known to be neither trusted
   * nor auto-whitelisted (SPF keying costs a DNS lookup), and asks greylistCheck for it then.
   */
  key?: string;
  /**
   * Skip the triplet for a client screen trusts: unexpired DNSWL trust with a negative score, or an
   * unexpired pass of every one of `tests` (none: DNSWL trust only). Undefined: screen is not asked.
   */
  trust?: { tests: readonly string[] };
  /** Skip the triplet for a client with this many AWL passes (that pass is counted too); 0: no AWL. */
  awlClients: number;
}

/** greylistLookup's answer: the client skips greylisting, the triplet's own answer, or no key given. */
export type GreylistAnswer =
  | { action: 'trusted'; by: 'dnswl' | 'screen' }
  | { action: 'awl'; count: number }
  | { action: 'unkeyed' }
  | GreylistResult;

export interface PendingTriplet {
  key: string;
  firstSeen: number;
  lastSeen: number;
  /** Set when an operator approved it: the next check passes until then. */
  approvedUntil?: number;
}

export interface MaintenanceParams {
  now?: number;
  maxAgeMs: number;
  retryWindowMs: number;
}

export interface MaintenanceResult {
  /** Triplets deleted (unseen for max-age, or never passed and unseen for the retry window). */
  triplets: number;
  /** AWL entries deleted (not bumped for max-age). */
  awl: number;
}

export interface AwlOptions {
  /** AWL entries expire this long after their last bump. Default DEFAULT_MAX_AGE_MS (35 days). */
  maxAgeMs?: number;
}

export interface ReputationStore {
  /** 'sqlite' or 'redis'. */
  readonly kind: 'sqlite' | 'redis';

  // Screen side (postscreen's temporary allowlist).
  getClient(ip: string): Promise<ClientRecord | undefined>;
  recordPass(ip: string, test: string, ttlMs: number, now?: number): Promise<void>;
  /** Removes the client's pass for this test (the client stays known). */
  recordFail(ip: string, test: string, now?: number): Promise<void>;
  recordDnswl(ip: string, score: number, ttlMs: number, now?: number): Promise<void>;
  /** Drops clients whose entries all expired more than retentionMs ago. One run at a time. */
  cleanup(now?: number): Promise<CleanupResult>;

  // Greylist side (Postgrey).
  greylistCheck(key: string, params: GreylistParams): Promise<GreylistResult>;
  /**
   * One recipient's store step, atomic: reads the client's trust and AWL count, and unless the
   * client skips greylisting (then an AWL pass is counted, as awlBump) checks the triplet as
   * greylistCheck does. Equivalent to getClient + awlCount, then awlBump or greylistCheck.
   */
  greylistLookup(query: GreylistQuery): Promise<GreylistAnswer>;
  /** Counts a first pass for this exact client IP, at most once per hour; returns the count. */
  awlBump(ip: string, now?: number, opts?: AwlOptions): Promise<number>;
  awlCount(ip: string, now?: number, opts?: AwlOptions): Promise<number>;
  /**
   * Pre-approves a triplet (creating it when unseen): its next check passes, as a first pass, if it
   * comes within ttlMs. False when the triplet has already passed (nothing to approve).
   */
  approveTriplet(key: string, ttlMs: number, now?: number): Promise<boolean>;
  /** Triplets seen but never passed, most recently seen first. */
  listPending(limit: number, now?: number): Promise<PendingTriplet[]>;
  /** Postgrey's key maintenance, done without blocking mail. */
  maintenance(params: MaintenanceParams): Promise<MaintenanceResult>;

  /** Resolves when the store answers; rejects with a StoreError otherwise. */
  ping(): Promise<void>;
  close(): Promise<void>;
}

export interface StoreOptions {
  /** Where reputation.sqlite lives (SqliteStore). */
  dataDir: string;
  /** Deadline for every call to the store (Redis commands, SQLite busy wait). Default 1000. */
  timeoutMs?: number;
  /** postscreen_cache_retention_time. Default 7 days. */
  retentionMs?: number;
  /** Redis key prefix. Default 'moat:'. */
  prefix?: string;
}

export const HOUR_MS = 3_600_000;
export const DAY_MS = 24 * HOUR_MS;
export const DEFAULT_TIMEOUT_MS = 1000;
export const DEFAULT_RETENTION_MS = 7 * DAY_MS;
/** Postgrey defaults. */
export const DEFAULT_DELAY_MS = 300_000;
export const DEFAULT_RETRY_WINDOW_MS = 2 * DAY_MS;
export const DEFAULT_MAX_AGE_MS = 35 * DAY_MS;
/** Postgrey counts a client's AWL pass at most once per hour. */
export const AWL_INTERVAL_MS = HOUR_MS;
