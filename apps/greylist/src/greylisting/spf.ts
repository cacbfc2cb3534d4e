/**
 * spf: does the client pass the SPF policy of the sender's domain? Exports SpfChecker.
 *
 * Uses mailauth's spf() (RFC 7208, lookup and void limits included) with a resolver on dns.servers.
 * Only a `pass` counts; none, neutral, softfail, fail, permerror, temperror and a check that takes
 * longer than dns.timeout all answer undefined, which leaves the triplet keyed on the client network
 * (plain Postgrey): SPF keying can only make a sender pass sooner, never make one fail. Answers are
 * cached per (client address, domain) for spfCacheTtl, and one lookup is shared by the recipients
 * that ask at the same time.
 */
import type { promises as dnsp } from 'node:dns';
import { spf } from 'mailauth';
import { TtlCache } from './dns.js';

export type SpfOutcome = { result: string; domain: string };

export class SpfChecker {
  readonly #cache: TtlCache<SpfOutcome>;
  readonly #inflight = new Map<string, Promise<SpfOutcome>>();

  constructor(
    readonly resolver: dnsp.Resolver,
    readonly timeoutMs: number,
    cacheTtlMs: number,
    readonly hostname: string,
  ) {
    this.#cache = new TtlCache(cacheTtlMs);
  }

  /** The SPF result for this client and sender ('pass', 'fail', ..., 'timeout'). */
  check(ip: string, sender: string, helo: string): Promise<SpfOutcome> {
    const at = sender.lastIndexOf('@');
    const domain = at < 0 ? '' : sender.slice(at + 1).toLowerCase();
    if (!domain) return Promise.resolve({ result: 'none', domain: '' });
    const key = `${ip}|${domain}`;
    const hit = this.#cache.get(key);
    if (hit) return Promise.resolve(hit);
    const pending = this.#inflight.get(key);
    if (pending) return pending;
    const p = this.#lookup(ip, sender, helo, domain).finally(() => this.#inflight.delete(key));
    this.#inflight.set(key, p);
    return p;
  }

  async #lookup(ip: string, sender: string, helo: string, domain: string): Promise<SpfOutcome> {
    const resolver = (name: string, type: string): Promise<unknown> =>
      (this.resolver.resolve as (n: string, t: string) => Promise<unknown>)(name, type);
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<SpfOutcome>((resolve) => {
      timer = setTimeout(() => resolve({ result: 'timeout', domain }), this.timeoutMs);
    });
    try {
      const outcome = await Promise.race([
        spf({ ip, sender, helo, mta: this.hostname, resolver: resolver as never }).then(
          (r) => ({ result: r.status.result, domain }),
          () => ({ result: 'temperror', domain }),
        ),
        timeout,
      ]);
      // temporary failures are not cached: the next recipient or retry asks again
      if (outcome.result !== 'timeout' && outcome.result !== 'temperror')
        this.#cache.set(`${ip}|${domain}`, outcome);
      return outcome;
    } finally {
      clearTimeout(timer);
    }
  }
}
