/**
 * errors: the one error type every store method rejects with, and the helpers that turn driver
 * errors (better-sqlite3, ioredis) and slow calls into it. Exports StoreError, StoreErrorKind,
 * toStoreError and withTimeout.
 *
 * Promise: a store never answers "pass" when it cannot answer. Whatever goes wrong below (Redis
 * down, a command past its deadline, SQLite busy past busy_timeout, a closed store) surfaces as a
 * StoreError, which callers turn into a 4xx (try again later).
 */

/**
 * - unavailable: the store cannot be reached or used (connection refused or lost, closed store,
 *   I/O error).
 * - timeout: the store did not answer within timeoutMs (Redis command timeout, SQLite busy).
 * - invalid: a bad setting or argument (unknown store URL, negative TTL); not worth retrying.
 */
export type StoreErrorKind = 'unavailable' | 'timeout' | 'invalid';

export class StoreError extends Error {
  override readonly name = 'StoreError';

  constructor(
    readonly kind: StoreErrorKind,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

const TIMEOUT_PATTERNS = [/timed out/i, /SQLITE_BUSY/, /SQLITE_LOCKED/, /database is locked/i];

/** Wraps anything thrown by a driver; a StoreError passes through unchanged. */
export function toStoreError(err: unknown, what: string): StoreError {
  if (err instanceof StoreError) return err;
  const message = err instanceof Error ? err.message : String(err);
  const code = (err as { code?: unknown } | null)?.code;
  const text = `${typeof code === 'string' ? code + ' ' : ''}${message}`;
  const kind: StoreErrorKind = TIMEOUT_PATTERNS.some((re) => re.test(text)) ? 'timeout' : 'unavailable';
  return new StoreError(kind, `${what}: ${message}`, { cause: err });
}

/**
 * Settles like `promise`, or rejects with StoreError('timeout') after `ms`. The driver keeps its own
 * deadline too; this one guarantees the caller never waits longer than asked, whatever the driver does.
 */
export function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new StoreError('timeout', `${what}: no answer within ${ms} ms`)),
      ms,
    );
    promise.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (err: unknown) => {
        clearTimeout(timer);
        reject(toStoreError(err, what));
      },
    );
  });
}

/** Rejects bad arguments the same way on every store. */
export function checkDuration(name: string, ms: number): void {
  if (!Number.isFinite(ms) || ms < 0)
    throw new StoreError('invalid', `${name} must be a finite duration >= 0, got ${ms}`);
}
