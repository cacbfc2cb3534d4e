/**
 * resolver: the DNS side. DnsLookup is the slice of node:dns's promises Resolver we use (injectable for
 * tests); createResolver builds one for `host:port` servers (empty = the system's) with 3 tries.
 * queryA asks for the A records of one name and never rejects: listed (records with TTLs), unlisted
 * (NXDOMAIN or no A records), or an error whose kind is timeout / servfail / refused / unreachable /
 * other. Every query is bounded by timeoutMs with our own timer, since c-ares' retries with backoff
 * can take much longer than the per-try timeout. An error is never a listing.
 */
import dns from 'node:dns';

export type ErrorKind = 'timeout' | 'servfail' | 'refused' | 'unreachable' | 'other';

export interface ARecord {
  address: string;
  /** Seconds. */
  ttl: number;
}

/** What we call on a resolver; node:dns's `promises.Resolver` fits. */
export interface DnsLookup {
  resolve4(hostname: string, options: { ttl: true }): Promise<ARecord[]>;
  resolveTxt?(hostname: string): Promise<string[][]>;
  resolveSoa?(hostname: string): Promise<{ minttl: number }>;
}

export type Answer =
  | { readonly kind: 'listed'; readonly records: readonly ARecord[] }
  | { readonly kind: 'unlisted' }
  | { readonly kind: 'error'; readonly error: ErrorKind; readonly code: string };

export const TRIES = 3;

/** A node:dns resolver for the given `host:port` servers; empty list = the system's resolvers. */
export function createResolver(servers: readonly string[], timeoutMs: number): DnsLookup {
  // Per-try timeout, so that the retries (UDP loss happens: DAEMONS.md) fit within the overall bound.
  const r = new dns.promises.Resolver({ timeout: Math.max(50, Math.floor(timeoutMs / TRIES)), tries: TRIES });
  if (servers.length > 0) r.setServers([...servers]);
  return r;
}

const NOT_LISTED = new Set(['ENOTFOUND', 'ENODATA', 'NOTFOUND', 'NODATA']);

/** How a resolver error reads for us; `unlisted` for "no such name" / "no A records". */
export function classify(err: unknown): Answer {
  const code = String((err as { code?: unknown } | null)?.code ?? 'UNKNOWN').toUpperCase();
  if (NOT_LISTED.has(code)) return { kind: 'unlisted' };
  const error: ErrorKind =
    code === 'ETIMEOUT' || code === 'TIMEOUT'
      ? 'timeout'
      : code === 'ESERVFAIL' || code === 'SERVFAIL'
        ? 'servfail'
        : code === 'EREFUSED' || code === 'REFUSED'
          ? 'refused'
          : code === 'ECONNREFUSED' || code === 'ECONNRESET' || code === 'ENETUNREACH'
            ? 'unreachable'
            : 'other';
  return { kind: 'error', error, code };
}

/** Runs fn, but gives up with onTimeout() after timeoutMs (the query itself is left to finish). */
export function bounded<T>(fn: () => Promise<T>, timeoutMs: number, onTimeout: () => T): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => resolve(onTimeout()), timeoutMs);
    const done = () => clearTimeout(timer);
    Promise.resolve()
      .then(fn)
      .then(
        (v) => {
          done();
          resolve(v);
        },
        (err: unknown) => {
          done();
          reject(err);
        },
      );
  });
}

/** The A records of name, within timeoutMs. Never rejects. */
export function queryA(resolver: DnsLookup, name: string, timeoutMs: number): Promise<Answer> {
  return bounded<Answer>(
    async () => {
      try {
        const records = await resolver.resolve4(name, { ttl: true });
        return records.length > 0 ? { kind: 'listed', records } : { kind: 'unlisted' };
      } catch (err) {
        return classify(err);
      }
    },
    timeoutMs,
    () => ({ kind: 'error', error: 'timeout', code: 'ETIMEOUT' }),
  );
}
