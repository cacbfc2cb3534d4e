/**
 * DnsblChecker with a fake resolver: weights once per pattern, listedBy and the reply map, TTL clamping
 * and the SOA negative TTL, error kinds, partial results at a deadline or abort, the cache, error-code
 * safety with retest, test points and the periodic self-test.
 */
import { describe, expect, it } from 'vitest';
import { DnsblChecker, type ARecord, type DnsLookup, type LogFn } from './index.js';

type Reply = { records: ARecord[] } | { code: string } | 'hang';

/** A resolver answering from a table; anything else is NXDOMAIN. Counts queries. */
class FakeResolver implements DnsLookup {
  readonly queries: string[] = [];
  constructor(
    readonly table: Record<string, Reply | { reply: Reply; delayMs: number }>,
    readonly soa: Record<string, number> = {},
  ) {}
  async resolve4(name: string): Promise<ARecord[]> {
    this.queries.push(name);
    const entry = this.table[name];
    const { reply, delayMs } =
      entry && typeof entry === 'object' && 'reply' in entry ? entry : { reply: entry, delayMs: 0 };
    if (delayMs) await new Promise((r) => setTimeout(r, delayMs));
    if (reply === 'hang') return new Promise(() => {});
    if (reply === undefined) throw Object.assign(new Error('nx'), { code: 'ENOTFOUND' });
    if ('code' in reply) throw Object.assign(new Error(reply.code), { code: reply.code });
    return reply.records;
  }
  async resolveSoa(zone: string): Promise<{ minttl: number }> {
    const minttl = this.soa[zone];
    if (minttl === undefined) throw Object.assign(new Error('refused'), { code: 'EREFUSED' });
    return { minttl };
  }
}

const a = (...addresses: string[]): { records: ARecord[] } => ({
  records: addresses.map((address) => ({ address, ttl: 300 })),
});
const CLIENT = '4.3.2.1'; // reverseName(IP)
const IP = '1.2.3.4';

function logs(): { log: LogFn; lines: string[] } {
  const lines: string[] = [];
  return { lines, log: (level, msg) => lines.push(`${level}: ${msg}`) };
}

describe('DnsblChecker scoring (fake resolver)', () => {
  it('adds each pattern once if any answer matches; several patterns of one zone can all add', async () => {
    const resolver = new FakeResolver({
      [`${CLIENT}.zen.test`]: a('127.0.0.4', '127.0.0.10', '127.0.0.11'),
      [`${CLIENT}.wl.test`]: a('127.0.5.2'),
      [`${CLIENT}.any.test`]: a('127.0.0.200'),
    });
    const { log, lines } = logs();
    const c = new DnsblChecker({
      sites:
        'zen.test=127.0.0.[2..11]*3 zen.test=127.0.0.[10;11]*2 zen.test=127.0.0.[20..30]*9 ' +
        'wl.test=127.0.[0..255].[1..3]*-3 any.test nx.test*5',
      resolver,
      log,
    });
    const r = await c.score(IP);
    expect(r.score).toBe(3 + 2 - 3 + 1);
    expect(r.contributions).toEqual([
      {
        zone: 'zen.test',
        name: 'zen.test',
        site: 'zen.test=127.0.0.[2..11]*3',
        weight: 3,
        answers: ['127.0.0.4', '127.0.0.10', '127.0.0.11'],
      },
      {
        zone: 'zen.test',
        name: 'zen.test',
        site: 'zen.test=127.0.0.[10;11]*2',
        weight: 2,
        answers: ['127.0.0.10', '127.0.0.11'],
      },
      {
        zone: 'wl.test',
        name: 'wl.test',
        site: 'wl.test=127.0.[0..255].[1..3]*-3',
        weight: -3,
        answers: ['127.0.5.2'],
      },
      { zone: 'any.test', name: 'any.test', site: 'any.test', weight: 1, answers: ['127.0.0.200'] },
    ]);
    expect(r.listedBy).toBe('zen.test');
    expect(r).toMatchObject({ errors: [], broken: [], pending: [], complete: true, ip: IP });
    // one query per distinct zone
    expect(resolver.queries.sort()).toEqual(
      ['zen.test', 'wl.test', 'any.test', 'nx.test'].map((z) => `${CLIENT}.${z}`).sort(),
    );
    expect(lines).toContain(
      'info: addr 1.2.3.4 listed by domain zen.test as 127.0.0.4 127.0.0.10 127.0.0.11',
    );
  });

  it('listedBy is the largest positive weight after the reply map; none when only allowlisted', async () => {
    const resolver = new FakeResolver({
      [`${CLIENT}.key123.zen.dq.test`]: a('127.0.0.2'),
      [`${CLIENT}.bar.test`]: a('127.0.0.2'),
      [`${CLIENT}.wl.test`]: a('127.0.0.2'),
    });
    const { log, lines } = logs();
    const c = new DnsblChecker({
      sites: 'bar.test*2 key123.zen.dq.test*5 wl.test*-9',
      replyMap: 'key123.zen.dq.test=zen.spamhaus.org',
      resolver,
      log,
    });
    const r = await c.score(IP);
    expect(r.score).toBe(-2);
    expect(r.listedBy).toBe('zen.spamhaus.org');
    expect(lines.join('\n')).not.toContain('key123');
    expect(c.status().map((s) => [s.name, s.role])).toEqual([
      ['bar.test', 'block'],
      ['zen.spamhaus.org', 'block'],
      ['wl.test', 'allow'],
    ]);
    const allow = await new DnsblChecker({ sites: 'wl.test*-9', resolver }).score(IP);
    expect(allow.listedBy).toBeUndefined();
    expect(allow.score).toBe(-9);
  });

  it('TTL: smallest answer TTL, NXDOMAIN uses the SOA minimum once known, clamped to [min, max]', async () => {
    const resolver = new FakeResolver(
      {
        [`${CLIENT}.short.test`]: { records: [{ address: '127.0.0.2', ttl: 5 }] },
        [`${CLIENT}.mid.test`]: {
          records: [
            { address: '127.0.0.2', ttl: 900 },
            { address: '127.0.0.3', ttl: 600 },
          ],
        },
        [`${CLIENT}.long.test`]: { records: [{ address: '127.0.0.2', ttl: 86400 }] },
      },
      { 'soa.test': 120 },
    );
    const one = (sites: string) => new DnsblChecker({ sites, resolver }).score(IP).then((r) => r.ttlMs);
    expect(await one('short.test')).toBe(60_000); // 5 s -> min 60 s
    expect(await one('mid.test')).toBe(600_000);
    expect(await one('long.test')).toBe(3_600_000); // 1 day -> max 1 h
    expect(await one('mid.test long.test')).toBe(600_000);
    expect(await one('nosoa.test')).toBe(60_000);
    const c = new DnsblChecker({
      sites: 'soa.test long.test',
      resolver,
      minTtlMs: 10_000,
      maxTtlMs: 7_200_000,
    });
    expect((await c.score(IP)).ttlMs).toBe(10_000); // SOA not known yet: minTtl
    await new Promise((res) => setTimeout(res, 5)); // the first NXDOMAIN started fetching the SOA
    expect((await c.score(IP)).ttlMs).toBe(120_000);
    expect(() => new DnsblChecker({ sites: 'a.test', resolver, minTtlMs: 10, maxTtlMs: 5 })).toThrow(
      RangeError,
    );
  });

  it('timeouts, SERVFAIL and refusals are errors, never weight', async () => {
    const resolver = new FakeResolver({
      [`${CLIENT}.hang.test`]: 'hang',
      [`${CLIENT}.sf.test`]: { code: 'ESERVFAIL' },
      [`${CLIENT}.ref.test`]: { code: 'EREFUSED' },
      [`${CLIENT}.odd.test`]: { code: 'EBADRESP' },
      [`${CLIENT}.ok.test`]: a('127.0.0.2'),
    });
    const c = new DnsblChecker({
      sites: 'hang.test*9 sf.test*9 ref.test*9 odd.test*9 ok.test',
      resolver,
      timeoutMs: 150,
    });
    const t0 = Date.now();
    const r = await c.score(IP);
    expect(Date.now() - t0).toBeLessThan(1000);
    expect(r.score).toBe(1);
    expect(r.errors.map((e) => [e.zone, e.kind])).toEqual([
      ['hang.test', 'timeout'],
      ['sf.test', 'servfail'],
      ['ref.test', 'refused'],
      ['odd.test', 'other'],
    ]);
    expect(r.complete).toBe(true);
  });

  it('partial score at a deadline; the rest keeps arriving via onUpdate until then only', async () => {
    const resolver = new FakeResolver({
      [`${CLIENT}.fast.test`]: a('127.0.0.2'),
      [`${CLIENT}.wl.test`]: { reply: a('127.0.0.2'), delayMs: 20 },
      [`${CLIENT}.slow.test`]: { reply: a('127.0.0.2'), delayMs: 400 },
    });
    const c = new DnsblChecker({ sites: 'fast.test*2 wl.test*-5 slow.test*4', resolver });
    const updates: number[] = [];
    const t0 = Date.now();
    const r = await c.score(IP, { deadline: Date.now() + 150, onUpdate: (p) => updates.push(p.score) });
    const took = Date.now() - t0;
    expect(took).toBeGreaterThanOrEqual(140);
    expect(took).toBeLessThan(350);
    expect(r).toMatchObject({ score: -3, complete: false, pending: ['slow.test'] });
    expect(updates).toEqual([2, -3]);
    await new Promise((res) => setTimeout(res, 350));
    expect(updates).toEqual([2, -3]);
    // with no deadline it waits for all
    expect((await c.score(IP)).score).toBe(1);
  });

  it('an AbortSignal returns what arrived; an already-passed deadline returns at once', async () => {
    const resolver = new FakeResolver({
      [`${CLIENT}.fast.test`]: a('127.0.0.2'),
      [`${CLIENT}.slow.test`]: 'hang',
    });
    const c = new DnsblChecker({ sites: 'fast.test slow.test*4', resolver, timeoutMs: 5000 });
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 50);
    const r = await c.score(IP, { signal: ac.signal });
    expect(r).toMatchObject({ score: 1, pending: ['slow.test'], complete: false });
    const now = await c.score(IP, { deadline: Date.now() - 1 });
    expect(now).toMatchObject({ score: 0, pending: ['fast.test', 'slow.test'] });
  });

  it('caches answers for their TTL on the injected clock, and shares a lookup in flight', async () => {
    const resolver = new FakeResolver({ [`${CLIENT}.zen.test`]: { reply: a('127.0.0.2'), delayMs: 20 } });
    const clock = {
      t: 1_000_000,
      now() {
        return this.t;
      },
    };
    const c = new DnsblChecker({ sites: 'zen.test', resolver, clock, cacheSize: 10 });
    const [r1, r2] = await Promise.all([c.score(IP), c.score(IP)]);
    expect(r1.score).toBe(1);
    expect(r2.score).toBe(1);
    expect(resolver.queries).toHaveLength(1);
    const cached = await c.score(IP, { deadline: clock.t }); // a cache hit needs no waiting
    expect(cached).toMatchObject({ score: 1, complete: true });
    expect(resolver.queries).toHaveLength(1);
    clock.t += 301_000; // past the 300 s TTL
    await c.score(IP);
    expect(resolver.queries).toHaveLength(2);
  });
});

describe('DnsblChecker safety (fake resolver)', () => {
  it('an error-code answer never counts, even without a filter, and puts the zone out of use until retested', async () => {
    const table: Record<string, Reply> = {
      [`${CLIENT}.zen.test`]: a('127.255.255.254'),
      [`${CLIENT}.dnswl.test`]: a('127.0.0.255'),
      '2.0.0.127.zen.test': a('127.0.0.2'),
      '2.0.0.127.dnswl.test': a('127.0.10.0'),
    };
    const resolver = new FakeResolver(table);
    const clock = {
      t: 5_000_000,
      now() {
        return this.t;
      },
    };
    const { log, lines } = logs();
    const c = new DnsblChecker({
      sites: 'zen.test*3 dnswl.test*-5',
      resolver,
      clock,
      log,
      brokenRetryMs: 60_000,
    });
    const r = await c.score(IP);
    expect(r.score).toBe(0);
    expect(r.contributions).toEqual([]);
    expect(r.broken.map((b) => b.zone)).toEqual(['zen.test', 'dnswl.test']);
    expect(r.broken[0]!.reason).toContain('answered 127.255.255.254 for 1.2.3.4');
    expect(lines.filter((l) => l.startsWith('warn: warning: dnsbl zone zen.test is not used'))).toHaveLength(
      1,
    );
    expect(c.status()[0]).toMatchObject({ state: 'broken', since: 5_000_000, retryAt: 5_060_000 });

    // while broken: not queried at all
    const before = resolver.queries.length;
    const r2 = await c.score('1.2.3.5');
    expect(resolver.queries.length).toBe(before);
    expect(r2.broken.map((b) => b.zone)).toEqual(['zen.test', 'dnswl.test']);

    // after the retry interval the next lookup triggers a test-point check; passing puts it back
    clock.t += 60_000;
    table[`${CLIENT}.zen.test`] = a('127.0.0.4');
    await c.score(IP); // starts the retest, still skips the zone
    await new Promise((res) => setTimeout(res, 10));
    expect(c.status().map((s) => s.state)).toEqual(['ok', 'ok']);
    expect(lines).toContain('info: dnsbl zone zen.test passed its test points and is used again');
    expect((await c.score(IP)).score).toBe(3);
  });

  it('selfTest: 127.0.0.2 must be listed, 127.0.0.1 must not; failing zones are not used', async () => {
    const resolver = new FakeResolver({
      '2.0.0.127.good.test': a('127.0.0.2'),
      '2.0.0.127.wl.test': a('127.0.10.0'),
      '2.0.0.127.all.test': a('127.0.0.2'),
      '1.0.0.127.all.test': a('127.0.0.2'),
      '2.0.0.127.quota.test': a('127.255.255.254'),
      '2.0.0.127.dead.test': { code: 'ETIMEOUT' },
      [`${CLIENT}.nopoint.test`]: a('127.0.0.2'),
      [`${CLIENT}.all.test`]: a('127.0.0.2'),
      [`${CLIENT}.good.test`]: a('127.0.0.2'),
      [`${CLIENT}.wl.test`]: a('127.0.10.0'),
      [`${CLIENT}.badwl.test`]: a('127.0.10.0'),
    });
    const c = new DnsblChecker({
      sites: 'good.test nopoint.test*5 all.test*5 quota.test*5 dead.test*5 wl.test*-1 badwl.test*-7',
      resolver,
    });
    expect(c.status().every((s) => s.state === 'untested')).toBe(true);
    const st = await c.selfTest();
    expect(st.map((s) => [s.zone, s.state, s.reason])).toEqual([
      ['good.test', 'ok', undefined],
      ['nopoint.test', 'broken', 'test point 127.0.0.2 is not listed'],
      ['all.test', 'broken', 'test point 127.0.0.1 is listed'],
      ['quota.test', 'broken', 'answered 127.255.255.254 (an error code: over quota or refused resolver)'],
      ['dead.test', 'broken', 'test point 127.0.0.2 lookup failed: timeout'],
      ['wl.test', 'ok', undefined],
      ['badwl.test', 'broken', 'test point 127.0.0.2 is not listed'],
    ]);
    const r = await c.score(IP);
    expect(r.score).toBe(0); // good +1, wl -1; the broken blocker and the broken allowlist are ignored
    expect(r.contributions.map((x) => x.zone)).toEqual(['good.test', 'wl.test']);
    expect(r.broken.map((b) => b.zone)).toEqual([
      'nopoint.test',
      'all.test',
      'quota.test',
      'dead.test',
      'badwl.test',
    ]);
  });

  it('startPeriodicSelfTest tests now and every interval until stopped', async () => {
    const table: Record<string, Reply> = { '2.0.0.127.zen.test': a('127.0.0.2') };
    const resolver = new FakeResolver(table);
    const c = new DnsblChecker({ sites: 'zen.test', resolver });
    const stop = c.startPeriodicSelfTest(40);
    await new Promise((res) => setTimeout(res, 10));
    expect(c.status()[0]!.state).toBe('ok');
    delete table['2.0.0.127.zen.test'];
    await new Promise((res) => setTimeout(res, 80));
    expect(c.status()[0]).toMatchObject({ state: 'broken', reason: 'test point 127.0.0.2 is not listed' });
    stop();
    const n = resolver.queries.length;
    await new Promise((res) => setTimeout(res, 100));
    expect(resolver.queries.length).toBe(n);
  });
});
