/**
 * checker: DnsblChecker scores one client address against every configured zone, all queried in
 * parallel (A records with TTLs), each lookup bounded by timeoutMs. score() resolves when every zone
 * has answered, or earlier with a partial result at `deadline` or when `signal` aborts, so the screen
 * can use what arrived when its greet wait ends. Each site pattern adds its weight once if any answer
 * matches; listedBy is the (reply-mapped) zone with the largest positive weight; ttlMs is the smallest
 * TTL of the answers (NXDOMAIN: the zone's SOA minimum when known, else minTtl) clamped to
 * [minTtl, maxTtl]. Promises: a timeout/SERVFAIL/refusal never adds weight; an error-code answer
 * (safety.ts) never adds weight and puts its zone out of use until a retest after brokenRetryMs; a
 * zone that fails its test points (selfTest, startPeriodicSelfTest) is not used, for blocking nor
 * allowlisting; status() tells each zone's state. Logs (dnsblog's words) use the reply-mapped names,
 * so a secret zone name never reaches a log line or a client. Exports DnsblChecker, DEFAULTS and types.
 */
import { parseReplyMap, publicName, type ReplyMap, type ReplyMapInput } from './reply-map.js';
import { bounded, createResolver, queryA, type Answer, type DnsLookup, type ErrorKind } from './resolver.js';
import { normalizeIp, reverseName } from './reverse.js';
import { isErrorCode, TEST_LISTED, TEST_UNLISTED } from './safety.js';
import { matchesFilter, parseSites, zonesOf, type Site } from './sites.js';
import {
  brokenLine,
  errorCodeReason,
  listedLine,
  lookupErrorLine,
  recoveredLine,
  testPointReason,
} from './texts.js';

export interface Clock {
  /** Milliseconds, like Date.now(). */
  now(): number;
}

export type LogLevel = 'debug' | 'info' | 'warn';
/** Adapt a pino logger with `(level, msg, fields) => logger[level](fields ?? {}, msg)`. */
export type LogFn = (level: LogLevel, message: string, fields?: Record<string, unknown>) => void;

export const DEFAULTS = {
  /** postscreen_dnsbl_timeout. */
  timeoutMs: 10_000,
  /** postscreen_dnsbl_min_ttl. */
  minTtlMs: 60_000,
  /** postscreen_dnsbl_max_ttl. */
  maxTtlMs: 3_600_000,
  /** How long a broken zone stays out of use before it is tested again. */
  brokenRetryMs: 300_000,
  /** Answers cached per zone+address (0 = no cache). */
  cacheSize: 0,
} as const;

export interface CheckerOptions {
  /** postscreen_dnsbl_sites text, entries, or parsed sites. */
  sites: string | readonly string[] | readonly Site[];
  /** `host:port` DNS servers (dns.servers); empty or missing = the system's. Ignored with `resolver`. */
  servers?: readonly string[];
  /** A resolver of our own (tests); default createResolver(servers, timeoutMs). */
  resolver?: DnsLookup;
  timeoutMs?: number;
  minTtlMs?: number;
  maxTtlMs?: number;
  /** Secret zone -> public name (postscreen_dnsbl_reply_map). */
  replyMap?: ReplyMapInput;
  brokenRetryMs?: number;
  cacheSize?: number;
  log?: LogFn;
  clock?: Clock;
}

export type ZoneRole = 'block' | 'allow' | 'mixed';
export type ZoneState = 'untested' | 'ok' | 'broken';

export interface ZoneStatus {
  /** The real zone (may hold a secret key: show `name`). */
  zone: string;
  /** The reply-mapped public name. */
  name: string;
  /** From the sign of its weights. */
  role: ZoneRole;
  state: ZoneState;
  /** Why it is broken. */
  reason?: string;
  /** When it entered this state (clock ms). */
  since?: number;
  /** Last test-point check. */
  testedAt?: number;
  /** When a broken zone is tested again. */
  retryAt?: number;
}

export interface Contribution {
  zone: string;
  name: string;
  /** The site entry that matched. */
  site: string;
  weight: number;
  /** The answers that matched its filter. */
  answers: string[];
}

export interface ZoneError {
  zone: string;
  name: string;
  kind: ErrorKind;
  /** The resolver's code, e.g. ETIMEOUT. */
  code: string;
}

export interface BrokenZone {
  zone: string;
  name: string;
  reason: string;
}

export interface DnsblResult {
  /** The normalised address (IPv4-mapped IPv6 as IPv4). */
  ip: string;
  score: number;
  contributions: Contribution[];
  /** Public name of the zone with the largest positive weight; undefined when none. */
  listedBy?: string;
  /** How long this result may be trusted, clamped to [minTtl, maxTtl]. */
  ttlMs: number;
  errors: ZoneError[];
  /** Zones not used for this result: out of use, or answered an error code now. */
  broken: BrokenZone[];
  /** Zones still unanswered when the result was taken. */
  pending: string[];
  /** True when no zone is pending. */
  complete: boolean;
}

export interface ScoreOptions {
  /** Clock time (ms) at which to stop waiting and return a partial result. */
  deadline?: number;
  /** Aborting returns a partial result at once. */
  signal?: AbortSignal;
  /** Called with the result so far each time a zone answers, until score() resolves. */
  onUpdate?: (partial: DnsblResult) => void;
}

interface Cached {
  answer: Answer;
  expires: number;
}

interface Soa {
  ttlSec?: number;
  until: number;
  pending?: Promise<void>;
}

const noLog: LogFn = () => {};

export class DnsblChecker {
  readonly sites: readonly Site[];
  /** Distinct zones in configuration order. */
  readonly zones: readonly string[];
  readonly timeoutMs: number;
  readonly minTtlMs: number;
  readonly maxTtlMs: number;
  readonly brokenRetryMs: number;
  readonly replyMap: ReplyMap;
  readonly #resolver: DnsLookup;
  readonly #cacheSize: number;
  readonly #log: LogFn;
  readonly #clock: Clock;
  readonly #state = new Map<string, ZoneStatus>();
  readonly #inflight = new Map<string, Promise<Answer>>();
  readonly #cache = new Map<string, Cached>();
  readonly #soa = new Map<string, Soa>();
  readonly #testing = new Map<string, Promise<void>>();

  constructor(opts: CheckerOptions) {
    this.sites =
      typeof opts.sites === 'string' || opts.sites.every((s) => typeof s === 'string')
        ? parseSites(opts.sites as string | readonly string[])
        : (opts.sites as readonly Site[]);
    this.zones = zonesOf(this.sites);
    this.timeoutMs = opts.timeoutMs ?? DEFAULTS.timeoutMs;
    this.minTtlMs = opts.minTtlMs ?? DEFAULTS.minTtlMs;
    this.maxTtlMs = opts.maxTtlMs ?? DEFAULTS.maxTtlMs;
    this.brokenRetryMs = opts.brokenRetryMs ?? DEFAULTS.brokenRetryMs;
    if (!(this.timeoutMs > 0)) throw new RangeError('dnsbl timeoutMs must be above 0');
    if (!(this.minTtlMs >= 0 && this.minTtlMs <= this.maxTtlMs)) {
      throw new RangeError('dnsbl minTtlMs must be between 0 and maxTtlMs');
    }
    this.replyMap = parseReplyMap(opts.replyMap);
    this.#resolver = opts.resolver ?? createResolver(opts.servers ?? [], this.timeoutMs);
    this.#cacheSize = opts.cacheSize ?? DEFAULTS.cacheSize;
    this.#log = opts.log ?? noLog;
    this.#clock = opts.clock ?? { now: () => Date.now() };
    for (const zone of this.zones) {
      const weights = this.sites.filter((s) => s.zone === zone).map((s) => s.weight);
      const role: ZoneRole = weights.every((w) => w >= 0)
        ? 'block'
        : weights.every((w) => w < 0)
          ? 'allow'
          : 'mixed';
      this.#state.set(zone, { zone, name: this.publicName(zone), role, state: 'untested' });
    }
  }

  /** The name shown for a zone (reply map applied). */
  publicName(zone: string): string {
    return publicName(this.replyMap, zone);
  }

  /** Every zone's state, in configuration order (copies). */
  status(): ZoneStatus[] {
    return this.zones.map((z) => ({ ...this.#state.get(z)! }));
  }

  /** Forgets cached answers (a config reload, a test). */
  clearCache(): void {
    this.#cache.clear();
  }

  async score(ip: string, opts: ScoreOptions = {}): Promise<DnsblResult> {
    const addr = normalizeIp(ip);
    const rev = reverseName(addr);
    const now = this.#clock.now();
    const arrived = new Map<string, Answer>();
    const skipped: string[] = [];
    const pending = new Set<string>();
    const waits: Promise<void>[] = [];
    let finished = false;
    for (const zone of this.zones) {
      if (!this.#usable(zone, now)) {
        skipped.push(zone);
        continue;
      }
      const a = this.#query(zone, addr, rev);
      if (!(a instanceof Promise)) {
        arrived.set(zone, a);
        continue;
      }
      pending.add(zone);
      waits.push(
        a.then((answer) => {
          pending.delete(zone);
          arrived.set(zone, answer);
          if (!finished && opts.onUpdate) opts.onUpdate(this.#build(addr, arrived, skipped, pending));
        }),
      );
    }
    if (waits.length > 0) await this.#until(Promise.all(waits), opts);
    finished = true;
    return this.#build(addr, arrived, skipped, pending);
  }

  /** The TXT texts a zone has for an address ([] when none or on any error). */
  async txt(ip: string, zone: string): Promise<string[]> {
    const r = this.#resolver;
    if (!r.resolveTxt) return [];
    const name = `${reverseName(ip)}.${zone}`;
    try {
      const records = await bounded(
        () => r.resolveTxt!(name),
        this.timeoutMs,
        () => [],
      );
      return records.map((chunks) => chunks.join(''));
    } catch {
      return [];
    }
  }

  /** Checks every zone's test points now (in parallel); resolves with status(). Never rejects. */
  async selfTest(): Promise<ZoneStatus[]> {
    await Promise.all(this.zones.map((z) => this.#testZone(z)));
    return this.status();
  }

  /** selfTest() now (unless immediate is false) and every intervalMs; returns the stop function. */
  startPeriodicSelfTest(intervalMs: number, opts: { immediate?: boolean } = {}): () => void {
    if (!(intervalMs > 0)) throw new RangeError('dnsbl self-test interval must be above 0');
    const run = () => void this.selfTest();
    if (opts.immediate ?? true) run();
    const timer = setInterval(run, intervalMs);
    timer.unref();
    return () => clearInterval(timer);
  }

  // --- lookups ---

  #usable(zone: string, now: number): boolean {
    const st = this.#state.get(zone)!;
    if (st.state !== 'broken') return true;
    if ((st.retryAt ?? 0) <= now) void this.#testZone(zone);
    return false;
  }

  /** A cached answer at once, or the (shared) lookup in flight. */
  #query(zone: string, addr: string, rev: string): Answer | Promise<Answer> {
    const key = `${zone}|${addr}`;
    const hit = this.#cache.get(key);
    if (hit) {
      if (hit.expires > this.#clock.now()) return hit.answer;
      this.#cache.delete(key);
    }
    const flying = this.#inflight.get(key);
    if (flying) return flying;
    const p = this.#fetch(zone, addr, `${rev}.${zone}`).finally(() => this.#inflight.delete(key));
    this.#inflight.set(key, p);
    return p;
  }

  async #fetch(zone: string, addr: string, name: string): Promise<Answer> {
    const answer = await queryA(this.#resolver, name, this.timeoutMs);
    const pub = this.publicName(zone);
    if (answer.kind === 'error') {
      this.#log('warn', lookupErrorLine(pub, addr, answer.error, answer.code), {
        zone: pub,
        ip: addr,
        kind: answer.error,
      });
      return answer;
    }
    if (answer.kind === 'listed') {
      const addresses = answer.records.map((r) => r.address);
      const code = addresses.find(isErrorCode);
      if (code !== undefined) {
        this.#markBroken(zone, errorCodeReason(code, addr));
        return answer;
      }
      this.#log('info', listedLine(addr, pub, addresses), { zone: pub, ip: addr, answers: addresses });
    }
    if (this.#cacheSize > 0) {
      this.#cache.set(`${zone}|${addr}`, {
        answer,
        expires: this.#clock.now() + this.#clamp(this.#ttlOf(zone, answer)),
      });
      for (const k of this.#cache.keys()) {
        if (this.#cache.size <= this.#cacheSize) break;
        this.#cache.delete(k);
      }
    }
    return answer;
  }

  /** Resolves when all is in, at the deadline, or on abort, whichever is first. */
  async #until(all: Promise<unknown>, opts: ScoreOptions): Promise<void> {
    const { deadline, signal } = opts;
    if (signal?.aborted) return;
    const waits: Promise<unknown>[] = [all];
    let timer: NodeJS.Timeout | undefined;
    let onAbort: (() => void) | undefined;
    if (deadline !== undefined) {
      const ms = deadline - this.#clock.now();
      if (ms <= 0) return;
      waits.push(new Promise<void>((r) => (timer = setTimeout(r, ms))));
    }
    if (signal) {
      waits.push(
        new Promise<void>((r) => {
          onAbort = () => r();
          signal.addEventListener('abort', onAbort, { once: true });
        }),
      );
    }
    try {
      await Promise.race(waits);
    } finally {
      clearTimeout(timer);
      if (onAbort) signal?.removeEventListener('abort', onAbort);
    }
  }

  // --- results ---

  /** Unclamped ms an answer may be kept. */
  #ttlOf(zone: string, answer: Answer): number {
    if (answer.kind === 'listed') return Math.min(...answer.records.map((r) => r.ttl)) * 1000;
    const neg = this.#negativeTtl(zone);
    return neg === undefined ? this.minTtlMs : neg * 1000;
  }

  #clamp(ms: number): number {
    return Math.min(this.maxTtlMs, Math.max(this.minTtlMs, ms));
  }

  #build(
    addr: string,
    arrived: ReadonlyMap<string, Answer>,
    skipped: readonly string[],
    pending: ReadonlySet<string>,
  ): DnsblResult {
    const errors: ZoneError[] = [];
    const broken: BrokenZone[] = [];
    const usable = new Set<string>();
    let ttl: number | undefined;
    for (const zone of this.zones) {
      const name = this.publicName(zone);
      const st = this.#state.get(zone)!;
      if (skipped.includes(zone)) {
        broken.push({ zone, name, reason: st.reason ?? 'broken' });
        continue;
      }
      const a = arrived.get(zone);
      if (!a) continue;
      if (a.kind === 'error') {
        errors.push({ zone, name, kind: a.error, code: a.code });
        continue;
      }
      const code = a.kind === 'listed' ? a.records.map((r) => r.address).find(isErrorCode) : undefined;
      if (code !== undefined) {
        broken.push({ zone, name, reason: errorCodeReason(code, addr) });
        continue;
      }
      if (st.state === 'broken') {
        broken.push({ zone, name, reason: st.reason ?? 'broken' });
        continue;
      }
      usable.add(zone);
      const t = this.#ttlOf(zone, a);
      ttl = ttl === undefined ? t : Math.min(ttl, t);
    }
    const contributions: Contribution[] = [];
    for (const site of this.sites) {
      const a = arrived.get(site.zone);
      if (a?.kind !== 'listed' || !usable.has(site.zone)) continue;
      const matched = a.records.map((r) => r.address).filter((x) => matchesFilter(site.filter, x));
      if (matched.length === 0) continue;
      contributions.push({
        zone: site.zone,
        name: this.publicName(site.zone),
        site: site.text,
        weight: site.weight,
        answers: matched,
      });
    }
    let top: Contribution | undefined;
    for (const c of contributions) if (c.weight > 0 && c.weight > (top?.weight ?? 0)) top = c;
    const pendingZones = this.zones.filter((z) => pending.has(z));
    return {
      ip: addr,
      score: contributions.reduce((sum, c) => sum + c.weight, 0),
      contributions,
      ...(top ? { listedBy: top.name } : {}),
      ttlMs: this.#clamp(ttl ?? this.minTtlMs),
      errors,
      broken,
      pending: pendingZones,
      complete: pendingZones.length === 0,
    };
  }

  // --- negative TTL (the zone's SOA minimum) ---

  /** The zone's negative TTL in seconds when known; starts fetching it when unknown or stale. */
  #negativeTtl(zone: string): number | undefined {
    const e = this.#soa.get(zone);
    if (!e || (e.until <= this.#clock.now() && !e.pending)) void this.#refreshSoa(zone);
    return e?.ttlSec;
  }

  #refreshSoa(zone: string): Promise<void> {
    const r = this.#resolver;
    if (!r.resolveSoa) return Promise.resolve();
    const e: Soa = this.#soa.get(zone) ?? { until: 0 };
    if (e.pending) return e.pending;
    e.pending = bounded(
      async () => (await r.resolveSoa!(zone)).minttl,
      this.timeoutMs,
      () => undefined,
    )
      .catch(() => undefined)
      .then((minttl) => {
        e.ttlSec = typeof minttl === 'number' ? minttl : e.ttlSec;
        e.until = this.#clock.now() + (typeof minttl === 'number' ? this.maxTtlMs : this.minTtlMs);
        delete e.pending;
      });
    this.#soa.set(zone, e);
    return e.pending;
  }

  // --- zone health ---

  #testZone(zone: string): Promise<void> {
    const running = this.#testing.get(zone);
    if (running) return running;
    const listedName = `${reverseName(TEST_LISTED)}.${zone}`;
    const unlistedName = `${reverseName(TEST_UNLISTED)}.${zone}`;
    const p = Promise.all([
      queryA(this.#resolver, listedName, this.timeoutMs),
      queryA(this.#resolver, unlistedName, this.timeoutMs),
      this.#refreshSoa(zone),
    ])
      .then(([listed, unlisted]) => {
        this.#state.get(zone)!.testedAt = this.#clock.now();
        const reason = judge(listed, unlisted);
        if (reason) this.#markBroken(zone, reason);
        else this.#markOk(zone);
      })
      .catch((err: unknown) => this.#markBroken(zone, `self-test failed: ${String(err)}`))
      .finally(() => this.#testing.delete(zone));
    this.#testing.set(zone, p);
    return p;
  }

  #markBroken(zone: string, reason: string): void {
    const st = this.#state.get(zone)!;
    const now = this.#clock.now();
    const news = st.state !== 'broken' || st.reason !== reason;
    if (st.state !== 'broken') st.since = now;
    st.state = 'broken';
    st.reason = reason;
    st.retryAt = now + this.brokenRetryMs;
    if (news) this.#log('warn', brokenLine(st.name, reason), { zone: st.name, reason });
  }

  #markOk(zone: string): void {
    const st = this.#state.get(zone)!;
    if (st.state === 'ok') return;
    if (st.state === 'broken') this.#log('info', recoveredLine(st.name), { zone: st.name });
    st.state = 'ok';
    st.since = this.#clock.now();
    delete st.reason;
    delete st.retryAt;
  }
}

/** Why a zone fails its test points, or undefined when it passes. */
function judge(listed: Answer, unlisted: Answer): string | undefined {
  for (const a of [listed, unlisted]) {
    const code = a.kind === 'listed' ? a.records.map((r) => r.address).find(isErrorCode) : undefined;
    if (code !== undefined) return errorCodeReason(code);
  }
  if (listed.kind === 'error') return testPointReason(TEST_LISTED, listed.error);
  if (listed.kind === 'unlisted') return testPointReason(TEST_LISTED, 'not listed');
  if (unlisted.kind === 'error') return testPointReason(TEST_UNLISTED, unlisted.error);
  if (unlisted.kind === 'listed') return testPointReason(TEST_UNLISTED, 'listed');
  return undefined;
}
