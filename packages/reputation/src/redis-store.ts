/**
 * redis-store: the ReputationStore shared across machines, in one Redis (not Redis Cluster: a
 * greylist script touches the triplet and the pending index together). Exports RedisStore.
 *
 * Promises:
 * - Every decision that reads then writes runs as one Lua script (redis-scripts.ts): atomic
 *   whatever the number of screen and greylist replicas. greylistLookup sends the lookups of one
 *   turn of the event loop in a few script calls (LOOKUP_BATCH each), all sent in that turn; each lookup
 *   is still decided (and fails) on its own.
 * - Records carry TTLs (PEXPIRE) so Redis drops them itself: client records at latest expiry +
 *   retention, triplets at max-age (retry window while never passed), AWL entries at max-age.
 *   cleanup() and maintenance() also sweep with SCAN in small batches, for records a clock change
 *   left behind; one cleanup at a time across processes (lock key, SET NX PX).
 * - A down or slow Redis fails fast: no offline queue (commands while disconnected reject at once),
 *   commandTimeout = timeoutMs, one retry per request, and every call is also bounded by
 *   withTimeout, so no call waits longer than timeoutMs. Failures are StoreErrors. The client keeps
 *   reconnecting in the background; open() waits up to timeoutMs for the first connection but does
 *   not fail when Redis is down (calls fail until it is back; use ping() to report it).
 */
import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { checkDuration, StoreError, toStoreError, withTimeout } from './errors.js';
import { awlCurrentCount } from './greylist-rules.js';
import { SCRIPTS, type ScriptName } from './redis-scripts.js';
import {
  AWL_INTERVAL_MS,
  DEFAULT_MAX_AGE_MS,
  DEFAULT_RETENTION_MS,
  DEFAULT_TIMEOUT_MS,
  type AwlOptions,
  type CleanupResult,
  type ClientRecord,
  type GreylistAnswer,
  type GreylistParams,
  type GreylistQuery,
  type GreylistResult,
  type MaintenanceParams,
  type MaintenanceResult,
  type PendingTriplet,
  type ReputationStore,
  type StoreOptions,
  type TestPass,
} from './types.js';

const SCAN_COUNT = 200;
/**
 * Lookups per script call. A turn's lookups go as calls of at most this many, all sent in that turn, so
 * Redis answers the first call while it runs the next and the event loop replies to those clients
 * meanwhile: measured on the greylist bench's RCPT run (32 sessions, about 15 lookups a turn), one
 * call per turn gave 30,700 decisions/s and calls of 8 gave 33,400 (six runs each, five of six pairs
 * faster); calls of 4 cost Redis more per lookup than they saved.
 */
const LOOKUP_BATCH = 8;
const CLEANUP_LOCK_MS = 10 * 60_000;

type ScriptFn = (...args: (string | number)[]) => Promise<unknown>;

interface Lookup {
  query: GreylistQuery;
  now: number;
  resolve(a: GreylistAnswer): void;
  reject(e: unknown): void;
}

export interface RedisStoreOptions extends Omit<StoreOptions, 'dataDir'> {
  dataDir?: string;
}

export class RedisStore implements ReputationStore {
  readonly kind = 'redis' as const;
  readonly #redis: Redis;
  readonly #timeoutMs: number;
  readonly #retentionMs: number;
  readonly #prefix: string;
  #lastError: Error | undefined;
  #closed = false;

  private constructor(redis: Redis, timeoutMs: number, retentionMs: number, prefix: string) {
    this.#redis = redis;
    this.#timeoutMs = timeoutMs;
    this.#retentionMs = retentionMs;
    this.#prefix = prefix;
  }

  /** `url` is redis://[user:pass@]host:port[/db] (or rediss:// for TLS). */
  static async open(url: string, opts: RedisStoreOptions = {}): Promise<RedisStore> {
    const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const retentionMs = opts.retentionMs ?? DEFAULT_RETENTION_MS;
    checkDuration('timeoutMs', timeoutMs);
    checkDuration('retentionMs', retentionMs);
    let redis: Redis;
    try {
      redis = new Redis(url, {
        lazyConnect: true,
        connectTimeout: timeoutMs,
        commandTimeout: timeoutMs,
        maxRetriesPerRequest: 1,
        enableOfflineQueue: false,
        // commands issued in the same turn of the event loop leave in one write (one round trip)
        enableAutoPipelining: true,
        // except greylistLookup, which batches its own turn into script calls: through the
        // auto-pipeline it would also wait for the previous pipeline's answer (one in flight at a
        // time) and pay for a Pipeline per call; sent at once, it measured 1.3-1.6x the lookups/s
        autoPipeliningIgnoredCommands: ['moatGreylistLookup'],
        // Reconnect for ever, backing off to 2 s: the store comes back when Redis does.
        retryStrategy: (attempt: number) => Math.min(100 * attempt, 2000),
      });
    } catch (err) {
      // the URL without its password: this text reaches the log
      const shown = url.replace(/^(\w+:\/\/[^:/@]*:)[^/?#]*@/, '$1********@');
      throw new StoreError('invalid', `bad Redis URL ${shown}: ${(err as Error).message}`, { cause: err });
    }
    for (const [name, script] of Object.entries(SCRIPTS)) {
      redis.defineCommand(
        name,
        script.numberOfKeys === undefined
          ? { lua: script.lua }
          : { lua: script.lua, numberOfKeys: script.numberOfKeys },
      );
    }
    const store = new RedisStore(redis, timeoutMs, retentionMs, opts.prefix ?? 'moat:');
    redis.on('error', (err: Error) => {
      store.#lastError = err;
    });
    await withTimeout(redis.connect(), timeoutMs, 'redis connect').catch(() => undefined);
    return store;
  }

  /** The last connection error ioredis reported (for logs and health pages). */
  get lastError(): Error | undefined {
    return this.#lastError;
  }

  #call<T>(what: string, fn: () => Promise<T>): Promise<T> {
    if (this.#closed) return Promise.reject(new StoreError('unavailable', `redis ${what}: store closed`));
    let promise: Promise<T>;
    try {
      promise = fn();
    } catch (err) {
      return Promise.reject(toStoreError(err, `redis ${what}`));
    }
    return withTimeout(promise, this.#timeoutMs, `redis ${what}`);
  }

  #script(name: ScriptName, ...args: (string | number)[]): Promise<unknown> {
    const fn = (this.#redis as unknown as Record<ScriptName, ScriptFn>)[name];
    return this.#call(name, () => fn.apply(this.#redis, args));
  }

  #key(kind: 'client' | 'triplet' | 'awl', id: string): string {
    return `${this.#prefix}${kind}:${id}`;
  }

  get #pendingKey(): string {
    return `${this.#prefix}pending`;
  }

  async getClient(ip: string): Promise<ClientRecord | undefined> {
    const h = await this.#call('getClient', () => this.#redis.hgetall(this.#key('client', ip)));
    if (h.ls === undefined) return undefined;
    const passes: Record<string, TestPass> = {};
    for (const [field, value] of Object.entries(h)) {
      if (!field.startsWith('p:')) continue;
      const [passedAt, expiresAt] = value.split(':').map(Number);
      if (passedAt !== undefined && expiresAt !== undefined) passes[field.slice(2)] = { passedAt, expiresAt };
    }
    const lastSeen = Number(h.ls);
    const record: ClientRecord = { ip, passes, lastSeen, latest: Number(h.lt ?? h.ls) };
    if (h.ds !== undefined && h.de !== undefined) {
      record.dnswlTrust = { score: Number(h.ds), recordedAt: Number(h.da ?? h.ls), expiresAt: Number(h.de) };
    }
    return record;
  }

  async recordPass(ip: string, test: string, ttlMs: number, now = Date.now()): Promise<void> {
    checkDuration('ttlMs', ttlMs);
    await this.#clientWrite('pass', ip, test, ttlMs, now);
  }

  async recordFail(ip: string, test: string, now = Date.now()): Promise<void> {
    await this.#clientWrite('fail', ip, test, 0, now);
  }

  async recordDnswl(ip: string, score: number, ttlMs: number, now = Date.now()): Promise<void> {
    checkDuration('ttlMs', ttlMs);
    if (!Number.isFinite(score))
      throw new StoreError('invalid', `DNSWL score must be a number, got ${score}`);
    await this.#clientWrite('dnswl', ip, String(score), ttlMs, now);
  }

  async #clientWrite(op: 'pass' | 'fail' | 'dnswl', ip: string, arg: string, ttlMs: number, now: number) {
    await this.#script(
      'moatClientWrite',
      this.#key('client', ip),
      op,
      Math.floor(now),
      Math.round(this.#retentionMs),
      arg,
      Math.round(ttlMs),
    );
  }

  async cleanup(now = Date.now()): Promise<CleanupResult> {
    const lockKey = `${this.#prefix}lock:cleanup`;
    const token = randomUUID();
    const got = await this.#call('cleanup lock', () =>
      this.#redis.set(lockKey, token, 'PX', CLEANUP_LOCK_MS, 'NX'),
    );
    if (got !== 'OK') return { retained: 0, dropped: 0, skipped: true };
    try {
      const cutoff = Math.floor(now - this.#retentionMs);
      const result: CleanupResult = { retained: 0, dropped: 0, skipped: false };
      await this.#scan('client', async (keys) => {
        const reply = (await this.#script('moatCleanupBatch', keys.length, ...keys, cutoff)) as [
          number,
          number,
        ];
        result.retained += reply[0];
        result.dropped += reply[1];
      });
      return result;
    } finally {
      await this.#script('moatUnlock', lockKey, token).catch(() => undefined);
    }
  }

  /** SCANs prefix+kind+':*' and hands each non-empty batch of keys to fn. */
  async #scan(kind: 'client' | 'triplet' | 'awl', fn: (keys: string[]) => Promise<void>): Promise<void> {
    const match = `${escapeGlob(this.#prefix)}${kind}:*`;
    let cursor = '0';
    do {
      const [next, keys] = await this.#call('scan', () =>
        this.#redis.scan(cursor, 'MATCH', match, 'COUNT', SCAN_COUNT),
      );
      cursor = next;
      if (keys.length > 0) await fn(keys);
    } while (cursor !== '0');
  }

  async greylistCheck(key: string, params: GreylistParams): Promise<GreylistResult> {
    const now = Math.floor(params.now ?? Date.now());
    const reply = (await this.#script(
      'moatGreylistCheck',
      this.#key('triplet', key),
      this.#pendingKey,
      key,
      now,
      Math.round(params.delayMs),
      Math.round(params.retryWindowMs),
      Math.round(params.maxAgeMs),
    )) as [number, number, number];
    return tripletResult(reply);
  }

  /**
   * Lookups of one turn of the event loop go to Redis as a few script calls of LOOKUP_BATCH (one
   * command and one pass of ioredis's machinery for each, all sent in that turn), each query still
   * atomic on its own; see GREYLIST_LOOKUP.
   */
  greylistLookup(query: GreylistQuery): Promise<GreylistAnswer> {
    return new Promise((resolve, reject) => {
      if (this.#lookups.length === 0) setImmediate(() => this.#flushLookups());
      this.#lookups.push({ query, now: Math.floor(query.now ?? Date.now()), resolve, reject });
    });
  }

  #lookups: Lookup[] = [];

  #flushLookups(): void {
    const all = this.#lookups;
    this.#lookups = [];
    // script calls per settings (one kind, when a single engine asks), at most LOOKUP_BATCH queries
    // each (see there); no one script keeps Redis from its other clients long
    const groups: Lookup[][] = [];
    for (const item of all) {
      const group = groups.find((g) => sameSettings(g[0]!.query, item.query));
      if (group) group.push(item);
      else groups.push([item]);
    }
    for (const group of groups)
      for (let i = 0; i < group.length; i += LOOKUP_BATCH)
        this.#sendLookups(group.slice(i, i + LOOKUP_BATCH));
  }

  /** One script call for queries of the same settings (sameSettings): those go once, see GREYLIST_LOOKUP. */
  #sendLookups(batch: Lookup[]): void {
    const first = batch[0]!.query;
    const tests = first.trust?.tests ?? [];
    const keys: string[] = [this.#pendingKey];
    const args: (string | number)[] = [
      Math.round(first.delayMs),
      Math.round(first.retryWindowMs),
      Math.round(first.maxAgeMs),
      first.trust ? 1 : 0,
      Math.max(0, Math.floor(first.awlClients)),
      AWL_INTERVAL_MS,
      tests.length,
      ...tests,
    ];
    for (const { query: q, now } of batch) {
      keys.push(this.#key('triplet', q.key ?? ''), this.#key('client', q.ip), this.#key('awl', q.ip));
      args.push(q.key ?? '', now);
    }
    this.#script('moatGreylistLookup', keys.length, ...keys, ...args).then(
      (reply) => {
        const r = reply as (number | string)[];
        batch.forEach((item, i) => {
          const code = r[3 * i] as number;
          if (code === -1)
            item.reject(new StoreError('unavailable', `redis greylistLookup: ${String(r[3 * i + 1])}`));
          else item.resolve(lookupAnswer([code, r[3 * i + 1] as number, r[3 * i + 2] as number]));
        });
      },
      (err: unknown) => batch.forEach((item) => item.reject(err)),
    );
  }

  async awlBump(ip: string, now = Date.now(), opts: AwlOptions = {}): Promise<number> {
    const maxAgeMs = opts.maxAgeMs ?? DEFAULT_MAX_AGE_MS;
    return (await this.#script(
      'moatAwlBump',
      this.#key('awl', ip),
      Math.floor(now),
      Math.round(maxAgeMs),
      AWL_INTERVAL_MS,
    )) as number;
  }

  async awlCount(ip: string, now = Date.now(), opts: AwlOptions = {}): Promise<number> {
    const [count, last] = await this.#call('awlCount', () =>
      this.#redis.hmget(this.#key('awl', ip), 'c', 'l'),
    );
    const state =
      count != null && last != null ? { count: Number(count), lastSeen: Number(last) } : undefined;
    return awlCurrentCount(state, now, opts.maxAgeMs ?? DEFAULT_MAX_AGE_MS);
  }

  async approveTriplet(key: string, ttlMs: number, now = Date.now()): Promise<boolean> {
    checkDuration('ttlMs', ttlMs);
    const reply = await this.#script(
      'moatGreylistApprove',
      this.#key('triplet', key),
      this.#pendingKey,
      key,
      Math.floor(now),
      Math.round(ttlMs),
    );
    return reply === 1;
  }

  async listPending(limit: number): Promise<PendingTriplet[]> {
    const n = Math.max(0, Math.floor(limit));
    if (n === 0) return [];
    const out: PendingTriplet[] = [];
    // Read a little more than asked: entries whose record expired are dropped from the index here.
    let start = 0;
    while (out.length < n) {
      const members = await this.#call('listPending', () =>
        this.#redis.zrevrange(this.#pendingKey, start, start + n * 2 - 1),
      );
      if (members.length === 0) break;
      start += members.length;
      const pipeline = this.#redis.pipeline();
      for (const key of members) pipeline.hmget(this.#key('triplet', key), 'f', 'l', 'p', 'a');
      const rows = await this.#call('listPending', () => pipeline.exec());
      const gone: string[] = [];
      members.forEach((key, i) => {
        const [err, value] = rows?.[i] ?? [null, null];
        const [f, l, p, a] = (err ? [] : (value as (string | null)[])) ?? [];
        if (f == null || l == null || p === '1') {
          gone.push(key);
          return;
        }
        if (out.length >= n) return;
        const item: PendingTriplet = { key, firstSeen: Number(f), lastSeen: Number(l) };
        if (a != null && Number(a) > 0) item.approvedUntil = Number(a);
        out.push(item);
      });
      if (gone.length > 0) {
        await this.#call('listPending', () => this.#redis.zrem(this.#pendingKey, ...gone));
        start -= gone.length;
      }
    }
    return out;
  }

  async maintenance(params: MaintenanceParams): Promise<MaintenanceResult> {
    const now = Math.floor(params.now ?? Date.now());
    const result: MaintenanceResult = { triplets: 0, awl: 0 };
    const tripletPrefix = this.#key('triplet', '');
    await this.#scan('triplet', async (keys) => {
      result.triplets += (await this.#script(
        'moatGreylistExpire',
        keys.length + 1,
        this.#pendingKey,
        ...keys,
        now,
        Math.round(params.maxAgeMs),
        Math.round(params.retryWindowMs),
        tripletPrefix.length,
      )) as number;
    });
    // Pending entries whose triplet Redis expired by TTL (the index itself has no TTL).
    const cutoff = now - Math.round(Math.min(params.retryWindowMs, params.maxAgeMs));
    for (let offset = 0; ;) {
      const members = await this.#call('maintenance', () =>
        this.#redis.zrangebyscore(this.#pendingKey, '-inf', `(${cutoff}`, 'LIMIT', offset, SCAN_COUNT),
      );
      if (members.length === 0) break;
      const removed = (await this.#script(
        'moatPendingPrune',
        members.length + 1,
        this.#pendingKey,
        ...members.map((m) => this.#key('triplet', m)),
        ...members,
      )) as number;
      offset += members.length - removed;
    }
    await this.#scan('awl', async (keys) => {
      result.awl += (await this.#script(
        'moatAwlExpire',
        keys.length,
        ...keys,
        now - Math.round(params.maxAgeMs),
      )) as number;
    });
    return result;
  }

  async ping(): Promise<void> {
    const answer = await this.#call('ping', () => this.#redis.ping());
    if (answer !== 'PONG') throw new StoreError('unavailable', `redis ping: unexpected answer ${answer}`);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      await withTimeout(this.#redis.quit(), this.#timeoutMs, 'redis quit');
    } catch {
      // Not connected, or no answer: drop the connection.
    }
    this.#redis.disconnect();
  }
}

/** True when two queries would send the same settings to GREYLIST_LOOKUP (all but ip, key and now). */
function sameSettings(a: GreylistQuery, b: GreylistQuery): boolean {
  if (
    Math.round(a.delayMs) !== Math.round(b.delayMs) ||
    Math.round(a.retryWindowMs) !== Math.round(b.retryWindowMs) ||
    Math.round(a.maxAgeMs) !== Math.round(b.maxAgeMs) ||
    Math.max(0, Math.floor(a.awlClients)) !== Math.max(0, Math.floor(b.awlClients)) ||
    (a.trust === undefined) !== (b.trust === undefined)
  )
    return false;
  const x = a.trust?.tests ?? [];
  const y = b.trust?.tests ?? [];
  return x === y || (x.length === y.length && x.every((t, i) => t === y[i]));
}

/** The lookup script's {code, n, firstPass} for one query as a GreylistAnswer. */
function lookupAnswer(reply: [number, number, number]): GreylistAnswer {
  switch (reply[0]) {
    case 3:
      return { action: 'trusted', by: 'dnswl' };
    case 4:
      return { action: 'trusted', by: 'screen' };
    case 5:
      return { action: 'awl', count: reply[1] };
    case 6:
      return { action: 'unkeyed' };
    default:
      return tripletResult(reply);
  }
}

/** The triplet script's {code, seconds, firstPass} as a GreylistResult. */
function tripletResult([code, seconds, firstPass]: [number, number, number]): GreylistResult {
  if (code === 2)
    return { action: 'pass', reason: 'triplet found', firstPass: firstPass === 1, delayedSeconds: seconds };
  return code === 0
    ? { action: 'defer', reason: 'new', secondsLeft: seconds }
    : { action: 'defer', reason: 'early-retry', secondsLeft: seconds };
}

function escapeGlob(s: string): string {
  return s.replace(/[*?[\]\\]/g, '\\$&');
}
