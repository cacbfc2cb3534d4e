/**
 * dns: the one resolver greylist uses (SPF and reverse lookups): the configured dns.servers (the
 * system's when empty), dns.timeout per query, two tries. Exports makeResolver and TtlCache.
 */
import { promises as dnsp } from 'node:dns';

export function makeResolver(servers: readonly string[], timeoutMs: number): dnsp.Resolver {
  const r = new dnsp.Resolver({ timeout: Math.max(1, Math.floor(timeoutMs / 2)), tries: 2 });
  if (servers.length) r.setServers([...servers]);
  return r;
}

/** A bounded map whose entries expire: answers are reused, never kept for ever. */
export class TtlCache<V> {
  readonly #map = new Map<string, { value: V; until: number }>();
  constructor(
    readonly ttlMs: number,
    readonly max = 10_000,
  ) {}

  get(key: string, now = Date.now()): V | undefined {
    const e = this.#map.get(key);
    if (e === undefined) return undefined;
    if (e.until <= now) {
      this.#map.delete(key);
      return undefined;
    }
    return e.value;
  }

  set(key: string, value: V, now = Date.now()): void {
    if (this.#map.size >= this.max) {
      const oldest = this.#map.keys().next().value;
      if (oldest !== undefined) this.#map.delete(oldest);
    }
    this.#map.set(key, { value, until: now + this.ttlMs });
  }
}
