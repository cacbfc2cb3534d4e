/**
 * rdns: the client's forward-confirmed reverse name (FCrDNS), for host-name whitelist entries.
 * Exports ReverseNames.
 *
 * The MX smtpd gets no client name from screen (the chain never resolves on its hot path), so greylist
 * looks the name up itself, only when a host-name whitelist entry exists and the decision reaches
 * the whitelist step: PTR, then A/AAAA of the name must contain the address. Once per address, cached
 * for an hour (an hour for failures too), never longer than dns.timeout, and shared by concurrent
 * recipients; the lookup starts at MAIL FROM so RCPT rarely waits. Any failure means "unknown", which
 * only means no host-name entry can match (the client is greylisted as Postgrey would).
 */
import type { promises as dnsp } from 'node:dns';
import net from 'node:net';
import { TtlCache } from './dns.js';

export class ReverseNames {
  readonly #cache = new TtlCache<string>(3_600_000);
  readonly #inflight = new Map<string, Promise<string>>();

  constructor(
    readonly resolver: dnsp.Resolver,
    readonly timeoutMs: number,
  ) {}

  /** The verified name when it is known already (no lookup, no waiting), else undefined. */
  cached(ip: string): string | undefined {
    return this.#cache.get(ip);
  }

  /** The verified name, or 'unknown'. */
  name(ip: string): Promise<string> {
    const hit = this.#cache.get(ip);
    if (hit !== undefined) return Promise.resolve(hit);
    let p = this.#inflight.get(ip);
    if (!p) {
      p = this.#lookup(ip).then((name) => {
        this.#cache.set(ip, name);
        this.#inflight.delete(ip);
        return name;
      });
      this.#inflight.set(ip, p);
    }
    return p;
  }

  async #lookup(ip: string): Promise<string> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<string>((resolve) => {
      timer = setTimeout(() => resolve('unknown'), this.timeoutMs);
    });
    const work = (async () => {
      const names = await this.resolver.reverse(ip);
      for (const name of names.slice(0, 5)) {
        const addrs = net.isIPv6(ip)
          ? await this.resolver.resolve6(name)
          : await this.resolver.resolve4(name);
        if (addrs.includes(ip)) return name.toLowerCase();
      }
      return 'unknown';
    })().catch(() => 'unknown');
    try {
      return await Promise.race([work, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }
}
