/**
 * sqlite-store: the single-machine ReputationStore, one SQLite file `<dataDir>/reputation.sqlite`
 * shared by every process on the host (screen, greylist, their replicas). Exports SqliteStore.
 *
 * Promises:
 * - WAL mode with synchronous=NORMAL: readers never block the writer; a crash may lose the last
 *   commits (a cache and greylist state: losing a few seconds costs a retry, never a wrong pass).
 * - Every change runs in one IMMEDIATE transaction, so the read-decide-write of greylistCheck (and
 *   of awlBump, the client updates and cleanup) is atomic across processes.
 * - busy_timeout = timeoutMs: a writer waits at most that long for another process's transaction,
 *   then the call rejects with StoreError('timeout'). better-sqlite3 is synchronous, so that wait
 *   blocks this process's event loop; every transaction here is a few row operations.
 * - maintenance walks the triplets in key order, MAINTENANCE_SCAN rows per transaction, and deletes
 *   the AWL entries in batches of MAINTENANCE_BATCH rows, yielding to the event loop in between, so
 *   it never holds the write lock for long.
 * - WAL checkpoints (the only fsyncs) run on a worker thread (checkpointer.ts). Under sustained
 *   writes the WAL only starts over once a checkpoint has caught up with it between two commits, so
 *   past AUTOCHECKPOINT_PAGES this connection checkpoints the last frames itself (measured: one stall
 *   of 10-15 ms per 16,000 writes at 35,000 writes/s); without the worker, at SQLite's usual 1000.
 * - Writes commit together: those of one turn of the event loop, and of up to GROUP_COMMIT_TURNS
 *   more turns while fewer than GROUP_COMMIT_SIZE wait (see #write); greylistLookup reads and writes
 *   inside that transaction, so a decision is one atomic step.
 */
import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { type Checkpointer, startCheckpointer } from './checkpointer.js';
import { checkDuration, StoreError, toStoreError } from './errors.js';
import {
  awlCurrentCount,
  clientTrust,
  decideAwlBump,
  decideTriplet,
  type TripletState,
} from './greylist-rules.js';
import {
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

export const SQLITE_FILE = 'reputation.sqlite';
const MAINTENANCE_BATCH = 500;
/** Triplets looked at per maintenance transaction (a range of the key, about a millisecond's work). */
const MAINTENANCE_SCAN = 2000;
/**
 * 3: the triplet table has no index besides its key. Every new triplet is a write, and each index is
 * more B-tree pages dirtied in every commit: version 1 had triplet_last_seen, version 2
 * triplet_pending (passed, last_seen), whose entries carry the whole key (WITHOUT ROWID). Measured
 * with batches of 15 new triplets: 8.3 -> 4.8 WAL pages per commit and 3.9 -> 2.7 us a triplet for
 * keys close together, 25.6 -> 22 pages and 9.2 -> 7 us for keys spread out as real mail spreads them.
 * What the index served is paid elsewhere, where it is rare: the expiry walks the key in ranges
 * (maintenance, hourly), and listPending (an operator's command) reads the table.
 */
const SCHEMA_VERSION = 3;
/**
 * A commit waits up to this many more turns of the event loop for more writes to share it (turns,
 * never a timer: on an idle loop a turn takes microseconds), unless GROUP_COMMIT_SIZE writes already
 * wait. Under load a turn brings about 15 greylist decisions and their commit costs about as much as
 * ten of them: measured on the RCPT bench (32 sessions, three runs each), 31,500 decisions/s
 * committing every turn, 33,900 waiting up to 2 turns (4 turns: 34,100).
 */
const GROUP_COMMIT_TURNS = 2;
const GROUP_COMMIT_SIZE = 32;
/** The worker's PASSIVE checkpoint period. */
const CHECKPOINT_INTERVAL_MS = 100;
/** This connection checkpoints itself only past this many WAL pages (64 MB), while the worker runs. */
const AUTOCHECKPOINT_PAGES = 16_384;
/** SQLite's own default, when there is no worker. */
const SQLITE_AUTOCHECKPOINT_PAGES = 1000;

const SCHEMA = `
CREATE TABLE IF NOT EXISTS client (
  ip TEXT PRIMARY KEY,
  last_seen INTEGER NOT NULL,
  latest INTEGER NOT NULL,
  dnswl_score REAL,
  dnswl_at INTEGER,
  dnswl_expires_at INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS client_latest ON client(latest);
CREATE TABLE IF NOT EXISTS client_pass (
  ip TEXT NOT NULL,
  test TEXT NOT NULL,
  passed_at INTEGER NOT NULL,
  expires_at INTEGER NOT NULL,
  PRIMARY KEY (ip, test)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS triplet (
  key TEXT PRIMARY KEY,
  first_seen INTEGER NOT NULL,
  last_seen INTEGER NOT NULL,
  passed INTEGER NOT NULL,
  approved_until INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS awl (
  ip TEXT PRIMARY KEY,
  count INTEGER NOT NULL,
  last_seen INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS awl_last_seen ON awl(last_seen);
`;

interface ClientRow {
  ip: string;
  last_seen: number;
  latest: number;
  dnswl_score: number | null;
  dnswl_at: number | null;
  dnswl_expires_at: number | null;
}
interface PassRow {
  test: string;
  passed_at: number;
  expires_at: number;
}
interface TripletRow {
  key: string;
  first_seen: number;
  last_seen: number;
  passed: number;
  approved_until: number;
}
/** The lookup statement's row: client (5), AWL (2), triplet (4); null where there is no record. */
type LookupColumns = [
  number | null,
  number | null,
  number | null,
  number | null,
  number | null,
  number | null,
  number | null,
  number | null,
  number | null,
  number | null,
  number | null,
];
interface AwlRow {
  count: number;
  last_seen: number;
}

function prepareAll(db: Database.Database) {
  return {
    client: db.prepare<[string], ClientRow>('SELECT * FROM client WHERE ip = ?'),
    passes: db.prepare<[string], PassRow>('SELECT test, passed_at, expires_at FROM client_pass WHERE ip = ?'),
    touchClient: db.prepare<[string, number, number]>(
      `INSERT INTO client (ip, last_seen, latest) VALUES (?, ?, ?)
       ON CONFLICT (ip) DO UPDATE SET last_seen = excluded.last_seen`,
    ),
    setLatest: db.prepare<[string, string]>(
      `UPDATE client SET latest = MAX(last_seen, COALESCE(dnswl_expires_at, 0),
         COALESCE((SELECT MAX(expires_at) FROM client_pass WHERE ip = ?), 0))
       WHERE ip = ?`,
    ),
    upsertPass: db.prepare<[string, string, number, number]>(
      `INSERT INTO client_pass (ip, test, passed_at, expires_at) VALUES (?, ?, ?, ?)
       ON CONFLICT (ip, test) DO UPDATE SET passed_at = excluded.passed_at, expires_at = excluded.expires_at`,
    ),
    deletePass: db.prepare<[string, string]>('DELETE FROM client_pass WHERE ip = ? AND test = ?'),
    setDnswl: db.prepare<[number, number, number, string]>(
      'UPDATE client SET dnswl_score = ?, dnswl_at = ?, dnswl_expires_at = ? WHERE ip = ?',
    ),
    dropPassesBefore: db.prepare<[number, number]>(
      'DELETE FROM client_pass WHERE ip IN (SELECT ip FROM client WHERE latest < ? ORDER BY latest, ip LIMIT ?)',
    ),
    dropClientsBefore: db.prepare<[number, number]>(
      'DELETE FROM client WHERE ip IN (SELECT ip FROM client WHERE latest < ? ORDER BY latest, ip LIMIT ?)',
    ),
    countClients: db.prepare<[], { n: number }>('SELECT COUNT(*) AS n FROM client'),
    triplet: db.prepare<[string], TripletRow>('SELECT * FROM triplet WHERE key = ?'),
    // greylistLookup's three reads (the client's screen record, its AWL entry, the triplet) in one
    // statement, as an array (LookupColumns): one call into SQLite instead of three, measured
    // 3.2 -> 2.5 us
    lookup: db
      .prepare<[{ ip: string; key: string | null }], unknown[]>(
        `SELECT c.last_seen, c.latest, c.dnswl_score, c.dnswl_at, c.dnswl_expires_at,
                a.count, a.last_seen, t.first_seen, t.last_seen, t.passed, t.approved_until
         FROM (SELECT 1) LEFT JOIN client c ON c.ip = @ip LEFT JOIN awl a ON a.ip = @ip
           LEFT JOIN triplet t ON t.key = @key`,
      )
      .raw(true),
    putTriplet: db.prepare<[string, number, number, number, number]>(
      `INSERT INTO triplet (key, first_seen, last_seen, passed, approved_until) VALUES (?, ?, ?, ?, ?)
       ON CONFLICT (key) DO UPDATE SET first_seen = excluded.first_seen, last_seen = excluded.last_seen,
         passed = excluded.passed, approved_until = excluded.approved_until`,
    ),
    pending: db.prepare<[number], TripletRow>(
      'SELECT * FROM triplet WHERE passed = 0 ORDER BY last_seen DESC LIMIT ?',
    ),
    // the last key of the next range of the expiry's walk (undefined: the walk is done)
    rangeEnd: db
      .prepare<[{ after: string; scan: number }], string | null>(
        'SELECT MAX(key) FROM (SELECT key FROM triplet WHERE key > @after ORDER BY key LIMIT @scan)',
      )
      .pluck(),
    // Postgrey's rule, "older than max-age, or never passed, not retried within the retry window and
    // not approved", in one range of the key
    expireTriplets: db.prepare<
      [{ after: string; last: string; aged: number; unretried: number; now: number }]
    >(
      `DELETE FROM triplet WHERE key > @after AND key <= @last
         AND ((passed = 1 AND last_seen < @aged)
           OR (passed = 0 AND last_seen < MAX(@aged, @unretried)
               AND (last_seen < @aged OR approved_until < @now)))`,
    ),
    awl: db.prepare<[string], AwlRow>('SELECT count, last_seen FROM awl WHERE ip = ?'),
    putAwl: db.prepare<[string, number, number]>(
      `INSERT INTO awl (ip, count, last_seen) VALUES (?, ?, ?)
       ON CONFLICT (ip) DO UPDATE SET count = excluded.count, last_seen = excluded.last_seen`,
    ),
    expireAwl: db.prepare<[number, number]>(
      'DELETE FROM awl WHERE ip IN (SELECT ip FROM awl WHERE last_seen < ? LIMIT ?)',
    ),
    ping: db.prepare<[], { ok: number }>('SELECT 1 AS ok'),
  };
}

type Op = { fn: () => unknown };
type Outcome = { ok: boolean; value: unknown };
type Pending = Op & { what: string; resolve(v: unknown): void; reject(e: unknown): void };

/** An operation of a batch threw: the batch is run again, each operation in its own savepoint. */
class OpFailed extends Error {}

export class SqliteStore implements ReputationStore {
  readonly kind = 'sqlite' as const;
  readonly file: string;
  readonly #db: Database.Database;
  readonly #q: ReturnType<typeof prepareAll>;
  readonly #retentionMs: number;
  readonly #checkpointer: Checkpointer | undefined;
  readonly #batchTx: Database.Transaction<(batch: Op[], values: unknown[]) => void>;
  readonly #savepointTx: Database.Transaction<(batch: Op[], outcomes: Outcome[]) => void>;

  private constructor(file: string, db: Database.Database, retentionMs: number, checkpointer?: Checkpointer) {
    this.file = file;
    this.#db = db;
    this.#q = prepareAll(db);
    this.#retentionMs = retentionMs;
    this.#checkpointer = checkpointer;
    // built once: better-sqlite3's transaction wrappers and statements cost more than the writes.
    // A batch runs bare; only when one of its operations throws is it rolled back and run again with
    // a savepoint around each, so the failing one does not undo the others.
    this.#batchTx = db.transaction((batch: Op[], values: unknown[]) => {
      for (const op of batch) {
        try {
          values.push(op.fn());
        } catch (err) {
          throw new OpFailed('operation failed', { cause: err });
        }
      }
    });
    const savepoint = db.prepare('SAVEPOINT moat_write');
    const release = db.prepare('RELEASE moat_write');
    const rollback = db.prepare('ROLLBACK TO moat_write');
    this.#savepointTx = db.transaction((batch: Op[], outcomes: Outcome[]) => {
      for (const op of batch) {
        savepoint.run();
        try {
          outcomes.push({ ok: true, value: op.fn() });
          release.run();
        } catch (err) {
          rollback.run();
          release.run();
          outcomes.push({ ok: false, value: err });
        }
      }
    });
  }

  /** Opens (creating when missing) `<dataDir>/reputation.sqlite`. */
  static async open(opts: StoreOptions): Promise<SqliteStore> {
    const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const retentionMs = opts.retentionMs ?? DEFAULT_RETENTION_MS;
    checkDuration('timeoutMs', timeoutMs);
    checkDuration('retentionMs', retentionMs);
    const file = path.join(opts.dataDir, SQLITE_FILE);
    let db: Database.Database | undefined;
    try {
      fs.mkdirSync(opts.dataDir, { recursive: true });
      db = new Database(file, { timeout: timeoutMs });
      db.pragma(`busy_timeout = ${Math.floor(timeoutMs)}`);
      db.pragma('journal_mode = WAL');
      db.pragma('synchronous = NORMAL');
      db.pragma(`wal_autocheckpoint = ${AUTOCHECKPOINT_PAGES}`);
      db.pragma(`journal_size_limit = ${AUTOCHECKPOINT_PAGES * 4096}`);
      const conn = db;
      conn
        .transaction(() => {
          if ((conn.pragma('user_version', { simple: true }) as number) < SCHEMA_VERSION) {
            conn.exec(SCHEMA);
            conn.exec('DROP INDEX IF EXISTS triplet_last_seen');
            conn.exec('DROP INDEX IF EXISTS triplet_pending');
            conn.pragma(`user_version = ${SCHEMA_VERSION}`);
          }
        })
        .immediate();
      const checkpointer = startCheckpointer(file, CHECKPOINT_INTERVAL_MS, timeoutMs, () => {
        // no worker: this connection checkpoints itself again, at SQLite's usual threshold
        if (conn.open) conn.pragma(`wal_autocheckpoint = ${SQLITE_AUTOCHECKPOINT_PAGES}`);
      });
      return new SqliteStore(file, db, retentionMs, checkpointer);
    } catch (err) {
      db?.close();
      throw toStoreError(err, `opening ${file}`);
    }
  }

  #run<T>(what: string, fn: () => T): Promise<T> {
    try {
      return Promise.resolve(fn());
    } catch (err) {
      return Promise.reject(toStoreError(err, `sqlite ${what}`));
    }
  }

  #pending: Pending[] = [];
  /** Turns the pending writes have waited for company. */
  #waited = 0;

  /**
   * Runs fn in an IMMEDIATE transaction (the write lock taken up front, so no upgrade deadlock).
   * Writes that arrive in the same turn of the event loop, and in up to GROUP_COMMIT_TURNS more, are
   * group-committed: one transaction for all of them, a savepoint around each only when one fails,
   * so one failing write does not undo the others. A commit costs far more than the writes
   * themselves; under load this turns N commits into one.
   */
  #write<T>(what: string, fn: () => T): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      if (this.#pending.length === 0) {
        this.#waited = 0;
        setImmediate(this.#due);
      }
      this.#pending.push({ what, fn, resolve: resolve as (v: unknown) => void, reject });
    });
  }

  readonly #due = (): void => {
    if (this.#pending.length < GROUP_COMMIT_SIZE && this.#waited < GROUP_COMMIT_TURNS) {
      this.#waited++;
      setImmediate(this.#due);
      return;
    }
    this.#flush();
  };

  #flush(): void {
    const batch = this.#pending;
    this.#pending = [];
    const values: unknown[] = [];
    try {
      this.#batchTx.immediate(batch, values);
    } catch (err) {
      if (err instanceof OpFailed) this.#flushEach(batch);
      else for (const op of batch) op.reject(toStoreError(err, `sqlite ${op.what}`));
      return;
    }
    for (let i = 0; i < batch.length; i++) batch[i]!.resolve(values[i]);
  }

  /** The batch again, each operation in its own savepoint: one failing write does not undo the others. */
  #flushEach(batch: Pending[]): void {
    const outcomes: Outcome[] = [];
    try {
      this.#savepointTx.immediate(batch, outcomes);
    } catch (err) {
      for (const op of batch) op.reject(toStoreError(err, `sqlite ${op.what}`));
      return;
    }
    batch.forEach((op, i) => {
      const o = outcomes[i]!;
      if (o.ok) op.resolve(o.value);
      else op.reject(toStoreError(o.value, `sqlite ${op.what}`));
    });
  }

  getClient(ip: string): Promise<ClientRecord | undefined> {
    // no transaction around the two reads: WAL gives each a consistent snapshot, and a pass recorded
    // between them only makes the answer fresher; BEGIN/COMMIT per lookup cost more than the lookup
    return this.#run('getClient', () => this.#readClient(ip));
  }

  #readClient(ip: string): ClientRecord | undefined {
    const row = this.#q.client.get(ip);
    return row && this.#clientRecord(ip, row);
  }

  #clientRecord(ip: string, row: Omit<ClientRow, 'ip'>): ClientRecord {
    const passes: Record<string, TestPass> = {};
    for (const p of this.#q.passes.all(ip))
      passes[p.test] = { passedAt: p.passed_at, expiresAt: p.expires_at };
    const record: ClientRecord = { ip, passes, lastSeen: row.last_seen, latest: row.latest };
    if (row.dnswl_score !== null && row.dnswl_expires_at !== null) {
      record.dnswlTrust = {
        score: row.dnswl_score,
        recordedAt: row.dnswl_at ?? row.last_seen,
        expiresAt: row.dnswl_expires_at,
      };
    }
    return record;
  }

  recordPass(ip: string, test: string, ttlMs: number, now = Date.now()): Promise<void> {
    return this.#write('recordPass', () => {
      checkDuration('ttlMs', ttlMs);
      this.#q.touchClient.run(ip, now, now);
      this.#q.upsertPass.run(ip, test, now, now + ttlMs);
      this.#q.setLatest.run(ip, ip);
    });
  }

  recordFail(ip: string, test: string, now = Date.now()): Promise<void> {
    return this.#write('recordFail', () => {
      this.#q.touchClient.run(ip, now, now);
      this.#q.deletePass.run(ip, test);
      this.#q.setLatest.run(ip, ip);
    });
  }

  recordDnswl(ip: string, score: number, ttlMs: number, now = Date.now()): Promise<void> {
    return this.#write('recordDnswl', () => {
      checkDuration('ttlMs', ttlMs);
      this.#q.touchClient.run(ip, now, now);
      this.#q.setDnswl.run(score, now, now + ttlMs, ip);
      this.#q.setLatest.run(ip, ip);
    });
  }

  /**
   * Drops clients expired for longer than the retention, MAINTENANCE_BATCH at a time (each batch its own
   * short transaction, the event loop free in between), as maintenance does: one DELETE over a busy
   * MX's table held the write lock for a second, and greylist answered 451 meanwhile.
   */
  async cleanup(now = Date.now()): Promise<CleanupResult> {
    const cutoff = now - this.#retentionMs;
    let dropped = 0;
    for (;;) {
      const n = await this.#write('cleanup', () => {
        this.#q.dropPassesBefore.run(cutoff, MAINTENANCE_BATCH);
        return this.#q.dropClientsBefore.run(cutoff, MAINTENANCE_BATCH).changes;
      });
      dropped += n;
      if (n < MAINTENANCE_BATCH) break;
      await yieldToEventLoop();
    }
    const retained = await this.#write('cleanup', () => this.#q.countClients.get()?.n ?? 0);
    return { retained, dropped, skipped: false };
  }

  greylistCheck(key: string, params: GreylistParams): Promise<GreylistResult> {
    const now = params.now ?? Date.now();
    return this.#write('greylistCheck', () => this.#triplet(key, now, params));
  }

  greylistLookup(query: GreylistQuery): Promise<GreylistAnswer> {
    const now = query.now ?? Date.now();
    return this.#write('greylistLookup', (): GreylistAnswer => {
      const [cLastSeen, cLatest, dnswlScore, dnswlAt, dnswlExpiresAt, awlCount, awlLastSeen, ...t] =
        this.#q.lookup.get({ ip: query.ip, key: query.key ?? null }) as LookupColumns;
      if (query.trust && cLastSeen !== null) {
        const record = this.#clientRecord(query.ip, {
          last_seen: cLastSeen,
          latest: cLatest!,
          dnswl_score: dnswlScore,
          dnswl_at: dnswlAt,
          dnswl_expires_at: dnswlExpiresAt,
        });
        const by = clientTrust(record, now, query.trust.tests);
        if (by !== undefined) return { action: 'trusted', by };
      }
      if (query.awlClients > 0) {
        const state = awlCount === null ? undefined : { count: awlCount, lastSeen: awlLastSeen! };
        if (awlCurrentCount(state, now, query.maxAgeMs) >= query.awlClients) {
          const { count, next } = decideAwlBump(state, now, query.maxAgeMs);
          if (next) this.#q.putAwl.run(query.ip, next.count, next.lastSeen);
          return { action: 'awl', count };
        }
      }
      if (query.key === undefined) return { action: 'unkeyed' };
      const [firstSeen, lastSeen, passed, approvedUntil] = t;
      const state =
        firstSeen === null ? undefined : tripletState(firstSeen, lastSeen!, passed!, approvedUntil!);
      return this.#decide(query.key, state, now, query);
    });
  }

  /** Postgrey's read-decide-write of one triplet; runs inside a batch's transaction. */
  #triplet(key: string, now: number, params: GreylistParams): GreylistResult {
    const row = this.#q.triplet.get(key);
    const state = row && tripletState(row.first_seen, row.last_seen, row.passed, row.approved_until);
    return this.#decide(key, state, now, params);
  }

  #decide(key: string, state: TripletState | undefined, now: number, params: GreylistParams): GreylistResult {
    const { result, next } = decideTriplet(state, now, params.delayMs, params.retryWindowMs, params.maxAgeMs);
    this.#q.putTriplet.run(key, next.firstSeen, next.lastSeen, next.passed ? 1 : 0, next.approvedUntil);
    return result;
  }

  awlBump(ip: string, now = Date.now(), opts: AwlOptions = {}): Promise<number> {
    const maxAgeMs = opts.maxAgeMs ?? DEFAULT_MAX_AGE_MS;
    return this.#write('awlBump', () => {
      const row = this.#q.awl.get(ip);
      const { count, next } = decideAwlBump(
        row && { count: row.count, lastSeen: row.last_seen },
        now,
        maxAgeMs,
      );
      if (next) this.#q.putAwl.run(ip, next.count, next.lastSeen);
      return count;
    });
  }

  awlCount(ip: string, now = Date.now(), opts: AwlOptions = {}): Promise<number> {
    const maxAgeMs = opts.maxAgeMs ?? DEFAULT_MAX_AGE_MS;
    return this.#run('awlCount', () => {
      const row = this.#q.awl.get(ip);
      return awlCurrentCount(row && { count: row.count, lastSeen: row.last_seen }, now, maxAgeMs);
    });
  }

  approveTriplet(key: string, ttlMs: number, now = Date.now()): Promise<boolean> {
    return this.#write('approveTriplet', () => {
      checkDuration('ttlMs', ttlMs);
      const row = this.#q.triplet.get(key);
      if (row?.passed) return false;
      this.#q.putTriplet.run(key, row?.first_seen ?? now, row?.last_seen ?? now, 0, now + ttlMs);
      return true;
    });
  }

  listPending(limit: number): Promise<PendingTriplet[]> {
    return this.#run('listPending', () =>
      this.#q.pending.all(Math.max(0, Math.floor(limit))).map((row) => {
        const item: PendingTriplet = { key: row.key, firstSeen: row.first_seen, lastSeen: row.last_seen };
        if (row.approved_until > 0) item.approvedUntil = row.approved_until;
        return item;
      }),
    );
  }

  async maintenance(params: MaintenanceParams): Promise<MaintenanceResult> {
    const now = params.now ?? Date.now();
    const result: MaintenanceResult = { triplets: 0, awl: 0 };
    // keys are never empty, so the walk starts after ''
    let after: string | undefined = '';
    while (after !== undefined) {
      const from: string = after;
      after = await this.#write('maintenance', () => {
        const last = this.#q.rangeEnd.get({ after: from, scan: MAINTENANCE_SCAN });
        if (last === null || last === undefined) return undefined;
        result.triplets += this.#q.expireTriplets.run({
          after: from,
          last,
          aged: now - params.maxAgeMs,
          unretried: now - params.retryWindowMs,
          now,
        }).changes;
        return last;
      });
      if (after !== undefined) await yieldToEventLoop();
    }
    for (;;) {
      const n = await this.#write('maintenance', () => {
        return this.#q.expireAwl.run(now - params.maxAgeMs, MAINTENANCE_BATCH).changes;
      });
      result.awl += n;
      if (n < MAINTENANCE_BATCH) break;
      await yieldToEventLoop();
    }
    return result;
  }

  ping(): Promise<void> {
    return this.#run('ping', () => {
      if (this.#q.ping.get()?.ok !== 1) throw new StoreError('unavailable', 'sqlite ping: no answer');
    });
  }

  async close(): Promise<void> {
    await this.#checkpointer?.stop();
    if (this.#db.open) this.#db.close();
  }
}

function tripletState(
  firstSeen: number,
  lastSeen: number,
  passed: number,
  approvedUntil: number,
): TripletState {
  return { firstSeen, lastSeen, passed: passed !== 0, approvedUntil };
}

function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
