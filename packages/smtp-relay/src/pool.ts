/**
 * pool: persistent connections to one next service (all of its replicas' addresses). Idle connections
 * are reused last-in first-out (the warmest first); new ones go round-robin over the addresses, and a
 * replica that refuses is skipped for the next one. Nothing here waits for a free slot: a hop holds a
 * connection for as long as its client's transaction, exactly like Postfix's proxy.
 */
import type { Logger } from '@moat/log';
import { RelayConnection, RelayError } from './connection.js';

export interface PoolOptions {
  /** Name of the next service, for logs ("filter"). */
  name: string;
  targets: readonly string[];
  ehloName: string;
  connectTimeoutMs: number;
  timeoutMs: number;
  /** Idle connections kept in all. */
  maxIdle: number;
  /** Messages per connection before it is closed and replaced (Postfix: max_use spirit). */
  maxUses?: number;
  logger: Logger;
}

export class RelayPool {
  readonly #idle: RelayConnection[] = [];
  #next = 0;
  #closed = false;
  readonly #open = new Set<RelayConnection>();

  constructor(readonly options: PoolOptions) {
    if (options.targets.length === 0) throw new Error(`${options.name}: no next-hop address`);
  }

  get openConnections(): number {
    return this.#open.size;
  }

  /** An idle connection if one is alive, else a new one; `reused` tells the caller it may be stale. */
  async acquire(fresh = false): Promise<{ conn: RelayConnection; reused: boolean }> {
    if (this.#closed) throw new RelayError('unavailable', 'pool closed', this.options.name);
    if (!fresh) {
      while (this.#idle.length) {
        const conn = this.#idle.pop()!;
        if (!conn.dead) return { conn, reused: true };
      }
    }
    const { targets } = this.options;
    let lastError: RelayError | undefined;
    for (let i = 0; i < targets.length; i++) {
      const target = targets[this.#next++ % targets.length]!;
      try {
        const conn = await RelayConnection.open({
          target,
          ehloName: this.options.ehloName,
          connectTimeoutMs: this.options.connectTimeoutMs,
          timeoutMs: this.options.timeoutMs,
        });
        this.#open.add(conn);
        conn.onDead(() => {
          this.#open.delete(conn);
          const at = this.#idle.indexOf(conn);
          if (at >= 0) this.#idle.splice(at, 1);
        });
        return { conn, reused: false };
      } catch (err) {
        lastError =
          err instanceof RelayError ? err : new RelayError('unavailable', (err as Error).message, target);
        this.options.logger.warn(
          { next: this.options.name, target, err: lastError.message },
          'next hop connection failed',
        );
      }
    }
    throw lastError!;
  }

  /** Returns a connection after a finished transaction (the server is ready for the next MAIL). */
  release(conn: RelayConnection): void {
    conn.uses++;
    conn.lastUsed = Date.now();
    const maxUses = this.options.maxUses ?? 1000;
    if (conn.dead) return;
    if (this.#closed || this.#idle.length >= this.options.maxIdle || conn.uses >= maxUses) {
      conn.quit();
      return;
    }
    this.#idle.push(conn);
  }

  /** Closes idle connections and refuses new acquisitions; busy ones close when released. */
  close(): void {
    this.#closed = true;
    for (const conn of this.#idle.splice(0)) conn.quit();
  }
}

/** A pool for a service section's next hop (next, nextConnectTimeout, nextTimeout, nextPoolIdle). */
export function poolFor(
  name: string,
  targets: readonly string[],
  section: { nextConnectTimeout: number; nextTimeout: number; nextPoolIdle: number },
  ehloName: string,
  logger: Logger,
): RelayPool {
  return new RelayPool({
    name,
    targets,
    ehloName,
    connectTimeoutMs: section.nextConnectTimeout,
    timeoutMs: section.nextTimeout,
    maxIdle: section.nextPoolIdle,
    logger,
  });
}
