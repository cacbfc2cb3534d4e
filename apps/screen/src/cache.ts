/**
 * cache: postscreen's temporary allowlist, kept in the shared reputation store (@moat/reputation:
 * SQLite under dataDir by default, Redis with `store: redis://...`), so screen replicas, restarts and
 * greylist see the same passes. One expiry per test per client address; expired entries are kept for
 * cacheRetention and dropped every cacheCleanupInterval (one cleaner at a time, the store's lock).
 *
 * Promise: the store never blocks mail. A lookup that fails or is slower than LOOKUP_TIMEOUT_MS is
 * "unknown" (the client runs the tests, as a new one would); a failed write is logged and forgotten.
 * Warnings are logged at most once a minute. Exports PassCache.
 */
import { maskSecrets } from '@moat/config';
import { openStore, type ClientRecord, type ReputationStore } from '@moat/reputation';
import type { Logger } from '@moat/log';
import { logText } from './replies.js';

/** The store's own deadline for each call on the connection path. */
export const LOOKUP_TIMEOUT_MS = 500;
const WARN_EVERY_MS = 60_000;
/** How often a store that could not be opened is tried again. */
const REOPEN_MS = 30_000;

export interface CacheOptions {
  store: string;
  dataDir: string;
  retentionMs: number;
  cleanupIntervalMs: number;
  logger: Logger;
  /** Retry interval for a store that could not be opened (default 30 s). */
  reopenMs?: number;
}

export class PassCache {
  #store: ReputationStore | undefined;
  #warnedAt = 0;
  #cleanup: NodeJS.Timeout | undefined;
  #reopen: NodeJS.Timeout | undefined;
  #opening: Promise<boolean> | undefined;
  #closed = false;
  readonly #logger: Logger;

  private constructor(store: ReputationStore | undefined, logger: Logger) {
    this.#store = store;
    this.#logger = logger;
  }

  /**
   * Opens the store. One that cannot be opened (its file unreadable, its folder not writable) leaves
   * screen serving without a cache, every client tested as a new one, and is tried again every
   * `reopenMs` until it opens.
   */
  static async open(o: CacheOptions): Promise<PassCache> {
    const cache = new PassCache(undefined, o.logger);
    if (!(await cache.#open(o))) {
      cache.#reopen = setInterval(() => {
        if (cache.#opening) return;
        cache.#opening = cache.#open(o).then((ok) => {
          cache.#opening = undefined;
          if (ok) {
            clearInterval(cache.#reopen);
            o.logger.info({ store: cache.kind }, 'pass cache store opened: cache in use');
          }
          return ok;
        });
      }, o.reopenMs ?? REOPEN_MS);
      cache.#reopen.unref();
    }
    return cache;
  }

  async #open(o: CacheOptions): Promise<boolean> {
    let store: ReputationStore;
    try {
      store = await openStore(o.store, {
        dataDir: o.dataDir,
        timeoutMs: LOOKUP_TIMEOUT_MS,
        retentionMs: o.retentionMs,
      });
    } catch (err) {
      // an error, not a warning: until it opens, every client is screened as a new one
      this.#warn(err, 'open', 'error', { store: maskSecrets('store', o.store) });
      return false;
    }
    if (this.#closed) {
      await store.close().catch(() => undefined);
      return false;
    }
    this.#store = store;
    if (o.cleanupIntervalMs > 0) {
      this.#cleanup = setInterval(() => void this.cleanup(), o.cleanupIntervalMs);
      this.#cleanup.unref();
    }
    return true;
  }

  get kind(): string {
    return this.#store?.kind ?? 'none';
  }

  /** The store failed: logged at most once a minute. */
  #warn(err: unknown, what: string, level: 'warn' | 'error' = 'warn', fields: object = {}): void {
    const now = Date.now();
    if (now - this.#warnedAt < WARN_EVERY_MS) return;
    this.#warnedAt = now;
    this.#logger[level]({ err: (err as Error).message, what, ...fields }, logText.cacheDown);
  }

  /** The client's record; undefined when unknown or when the store cannot answer. */
  async lookup(ip: string): Promise<ClientRecord | undefined> {
    if (!this.#store) return undefined;
    try {
      return await this.#store.getClient(ip);
    } catch (err) {
      this.#warn(err, 'lookup');
      return undefined;
    }
  }

  pass(ip: string, test: string, ttlMs: number): void {
    this.#store?.recordPass(ip, test, ttlMs).catch((err: unknown) => this.#warn(err, 'record pass'));
  }

  fail(ip: string, test: string): void {
    this.#store?.recordFail(ip, test).catch((err: unknown) => this.#warn(err, 'record fail'));
  }

  dnswl(ip: string, score: number, ttlMs: number): void {
    this.#store?.recordDnswl(ip, score, ttlMs).catch((err: unknown) => this.#warn(err, 'record dnswl'));
  }

  async cleanup(): Promise<void> {
    if (!this.#store) return;
    try {
      const r = await this.#store.cleanup();
      if (!r.skipped) {
        this.#logger.info(
          { retained: r.retained, dropped: r.dropped },
          `cache ${this.kind} cleanup: retained=${r.retained} dropped=${r.dropped}`,
        );
      }
    } catch (err) {
      this.#warn(err, 'cleanup');
    }
  }

  async close(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#reopen);
    clearInterval(this.#cleanup);
    await this.#opening;
    await this.#store?.close().catch(() => undefined);
  }
}
