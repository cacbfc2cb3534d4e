/**
 * Against a real rbldnsd on a free loopback port: listing, filters and weights, IPv6, a DNSWL zone,
 * error codes, failing test points, dead and failing resolvers, and a zone file edited while it runs.
 */
import dgram from 'node:dgram';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { appendZone, startRbldnsd, writeZone, type RbldnsdHandle } from '@moat/daemons';
import { tmpDir, waitFor } from '@moat/testkit';
import { DnsblChecker, rankLine, replyText, verdict, type CheckerOptions, type LogFn } from './index.js';

const SITES =
  'zen.test=127.0.0.[2..11]*3, zen.test=127.0.0.[10;11]*2, dnswl.test=127.0.[0..255].[1..3]*-5, ' +
  'quota.test notest.test*4 live.test*2';

let dns: RbldnsdHandle;
let stateDir: string;
const lines: string[] = [];
const log: LogFn = (level, msg) => lines.push(`${level}: ${msg}`);

function checker(extra: Partial<CheckerOptions> = {}): DnsblChecker {
  return new DnsblChecker({ sites: SITES, servers: [dns.address], timeoutMs: 2000, log, ...extra });
}

beforeAll(async () => {
  stateDir = tmpDir('moat-dnsbl-');
  // the zone files exist before rbldnsd starts, so its first load serves them all
  const dir = path.join(stateDir, 'rbldnsd');
  fs.mkdirSync(dir);
  writeZone(dir, 'zen4.zone', [
    '$SOA 3600 ns.zen.test. admin.zen.test. 0 600 300 86400 120',
    '$TTL 300',
    '127.0.0.2 :127.0.0.2:test point $',
    '127.0.0.4 :127.0.0.4:listed in sbl $',
    '127.0.0.5 :127.0.0.10:listed in pbl $',
    '127.0.0.6 :127.0.0.4:sbl $',
    '127.0.0.6 :127.0.0.10:pbl $',
    '127.0.0.7 :127.0.0.200:outside the filter',
  ]);
  writeZone(dir, 'zen6.zone', ['2001:db8::25 :127.0.0.4:v6 listed']);
  writeZone(dir, 'dnswl.zone', [
    '127.0.0.2 :127.0.10.0:',
    '127.0.0.6 :127.0.10.1:',
    '127.0.0.20 :127.0.10.3:',
  ]);
  writeZone(dir, 'quota.zone', ['127.0.0.2 :127.0.0.2:', '127.0.0.30 :127.255.255.254:over quota']);
  writeZone(dir, 'notest.zone', ['127.0.0.40 :127.0.0.2:listed, but no test point']);
  writeZone(dir, 'live.zone', ['127.0.0.2 :127.0.0.2:']);
  dns = await startRbldnsd({
    stateDir,
    dir,
    zones: [
      { name: 'zen.test', type: 'ip4set', file: 'zen4.zone' },
      { name: 'zen.test', type: 'ip6trie', file: 'zen6.zone' },
      { name: 'dnswl.test', type: 'ip4set', file: 'dnswl.zone' },
      { name: 'quota.test', type: 'ip4set', file: 'quota.zone' },
      { name: 'notest.test', type: 'ip4set', file: 'notest.zone' },
      { name: 'live.test', type: 'ip4set', file: 'live.zone' },
    ],
  });
}, 15_000);

afterAll(async () => {
  await dns?.stop();
  if (stateDir) fs.rmSync(stateDir, { recursive: true, force: true });
});

describe('DnsblChecker against rbldnsd', () => {
  it('self-test: zones passing their test points are ok, the one without 127.0.0.2 is not used', async () => {
    const c = checker();
    const st = await c.selfTest();
    expect(st.map((s) => [s.zone, s.role, s.state])).toEqual([
      ['zen.test', 'block', 'ok'],
      ['dnswl.test', 'allow', 'ok'],
      ['quota.test', 'block', 'ok'],
      ['notest.test', 'block', 'broken'],
      ['live.test', 'block', 'ok'],
    ]);
    expect(st[3]!.reason).toBe('test point 127.0.0.2 is not listed');
    expect(lines).toContain(
      'warn: warning: dnsbl zone notest.test is not used: test point 127.0.0.2 is not listed',
    );
    // a fresh, untested checker counts the listing; after the self-test it does not
    expect((await checker().score('127.0.0.40')).score).toBe(4);
    const r = await c.score('127.0.0.40');
    expect(r.score).toBe(0);
    expect(r.broken.map((b) => b.zone)).toEqual(['notest.test']);
  });

  it('a listed client: weights per pattern, reply text, rank line, dnsblog line, TTL from the answer', async () => {
    const c = checker();
    const r = await c.score('127.0.0.4');
    expect(r).toMatchObject({ score: 3, listedBy: 'zen.test', errors: [], complete: true, ttlMs: 60_000 });
    expect(verdict(r.score, { threshold: 3 })).toBe('block');
    expect(replyText(r.ip, r)).toBe(
      '550 5.7.1 Service unavailable; client [127.0.0.4] blocked using zen.test',
    );
    expect(rankLine(r.score, r.ip, 40001)).toBe('DNSBL rank 3 for [127.0.0.4]:40001');
    expect(lines).toContain('info: addr 127.0.0.4 listed by domain zen.test as 127.0.0.4');

    // two answers (127.0.0.4 and .10): the [2..11] pattern adds 3 once, the [10;11] pattern adds 2
    const two = await c.score('127.0.0.5');
    expect(two.score).toBe(5);
    // ... and a DNSWL answer takes 5 off
    const mixed = await c.score('127.0.0.6');
    expect(mixed.contributions.map((x) => [x.site, x.answers])).toEqual([
      ['zen.test=127.0.0.[2..11]*3', ['127.0.0.4', '127.0.0.10']],
      ['zen.test=127.0.0.[10;11]*2', ['127.0.0.10']],
      ['dnswl.test=127.0.[0..255].[1..3]*-5', ['127.0.10.1']],
    ]);
    expect(mixed.score).toBe(0);
    // an answer outside every filter counts for nothing
    expect((await c.score('127.0.0.7')).score).toBe(0);

    // TTL: only zen.test asked, its answers have $TTL 300
    const zen = new DnsblChecker({ sites: 'zen.test', servers: [dns.address], timeoutMs: 2000 });
    expect((await zen.score('127.0.0.4')).ttlMs).toBe(300_000);
  });

  it('an unlisted client scores 0 with the negative TTL from the SOA; a reply map hides the zone', async () => {
    const zen = new DnsblChecker({
      sites: 'zen.test*3',
      servers: [dns.address],
      timeoutMs: 2000,
      replyMap: 'zen.test=zen.example.org',
      log,
    });
    await zen.selfTest();
    const r = await zen.score('127.0.0.9');
    expect(r).toMatchObject({ score: 0, contributions: [], errors: [], ttlMs: 120_000 });
    const listed = await zen.score('127.0.0.4');
    expect(replyText(listed.ip, listed)).toBe(
      '550 5.7.1 Service unavailable; client [127.0.0.4] blocked using zen.example.org',
    );
    expect(lines).toContain('info: addr 127.0.0.4 listed by domain zen.example.org as 127.0.0.4');
  });

  it('an allowlisted client (DNSWL) gets a negative total', async () => {
    const r = await checker().score('127.0.0.20');
    expect(r.score).toBe(-5);
    expect(r.listedBy).toBeUndefined();
    expect(verdict(r.score, { threshold: 3, allowlistThreshold: -1 })).toBe('allowlist');
  });

  it('IPv6 (nibble format) and IPv4-mapped clients; TXT', async () => {
    const c = checker();
    expect(await c.score('2001:db8::25')).toMatchObject({
      score: 3,
      listedBy: 'zen.test',
      ip: '2001:db8::25',
    });
    expect((await c.score('2001:db8::26')).score).toBe(0);
    expect(await c.score('::ffff:127.0.0.4')).toMatchObject({ score: 3, ip: '127.0.0.4' });
    expect(await c.txt('127.0.0.4', 'zen.test')).toEqual(['listed in sbl 127.0.0.4']);
    expect(await c.txt('2001:db8::25', 'zen.test')).toEqual(['v6 listed']);
    expect(await c.txt('127.0.0.9', 'zen.test')).toEqual([]);
  });

  it('an error-code answer is not a listing (no filter on quota.test): the zone is marked broken', async () => {
    const c = checker({ brokenRetryMs: 60_000 });
    const r = await c.score('127.0.0.30');
    expect(r.score).toBe(0);
    expect(r.contributions).toEqual([]);
    expect(r.broken).toEqual([
      {
        zone: 'quota.test',
        name: 'quota.test',
        reason: 'answered 127.255.255.254 for 127.0.0.30 (an error code: over quota or refused resolver)',
      },
    ]);
    expect(c.status().find((s) => s.zone === 'quota.test')).toMatchObject({ state: 'broken' });
    expect(
      lines.some((l) => l.startsWith('warn: warning: dnsbl zone quota.test is not used: answered')),
    ).toBe(true);
    // out of use: a client quota.test would list normally is not counted there now
    const later = await c.score('127.0.0.4');
    expect(later.score).toBe(3);
    expect(later.broken.map((b) => b.zone)).toEqual(['quota.test']);
  });

  it('a zone file edit is seen once rbldnsd reloads it', async () => {
    const c = checker();
    expect((await c.score('127.0.0.50')).score).toBe(0);
    appendZone(dns.dir, 'live.zone', ['127.0.0.50 :127.0.0.3:added while running']);
    const r = await waitFor(async () => {
      const x = await c.score('127.0.0.50');
      return x.score === 2 ? x : undefined;
    }, 5000);
    expect(r.listedBy).toBe('live.test');
  });
});

describe('resolver failures are never listings', () => {
  it('a server that never answers: kind timeout, score 0, within timeoutMs', async () => {
    const hole = dgram.createSocket('udp4');
    await new Promise<void>((r) => hole.bind(0, '127.0.0.1', () => r()));
    try {
      const c = new DnsblChecker({
        sites: SITES,
        servers: [`127.0.0.1:${hole.address().port}`],
        timeoutMs: 400,
      });
      const t0 = Date.now();
      const r = await c.score('127.0.0.4');
      const took = Date.now() - t0;
      expect(took).toBeGreaterThanOrEqual(390);
      expect(took).toBeLessThan(900);
      expect(r.score).toBe(0);
      expect(r.errors.map((e) => e.kind)).toEqual(['timeout', 'timeout', 'timeout', 'timeout', 'timeout']);
    } finally {
      hole.close();
    }
  });

  it('a closed port is unreachable, a zone rbldnsd does not serve is refused, SERVFAIL is servfail', async () => {
    const closed = dgram.createSocket('udp4');
    await new Promise<void>((r) => closed.bind(0, '127.0.0.1', () => r()));
    const port = closed.address().port;
    await new Promise<void>((r) => closed.close(() => r()));
    const dead = await new DnsblChecker({
      sites: 'zen.test*9',
      servers: [`127.0.0.1:${port}`],
      timeoutMs: 400,
    }).score('127.0.0.4');
    expect(dead).toMatchObject({ score: 0, errors: [{ zone: 'zen.test', kind: 'unreachable' }] });

    const other = await new DnsblChecker({
      sites: 'other.test*9',
      servers: [dns.address],
      timeoutMs: 1000,
    }).score('127.0.0.4');
    expect(other).toMatchObject({ score: 0, errors: [{ zone: 'other.test', kind: 'refused' }] });

    const sf = dgram.createSocket('udp4');
    sf.on('message', (q, from) => {
      let end = 12;
      while (q[end]) end += q[end]! + 1;
      const reply = Buffer.from(q.subarray(0, end + 5));
      reply[2] = 0x81; // QR, RD
      reply[3] = 0x82; // RA, rcode 2 = SERVFAIL
      reply.writeUInt16BE(0, 6);
      reply.writeUInt16BE(0, 8);
      reply.writeUInt16BE(0, 10);
      sf.send(reply, from.port, from.address);
    });
    await new Promise<void>((r) => sf.bind(0, '127.0.0.1', () => r()));
    try {
      const r = await new DnsblChecker({
        sites: 'zen.test*9',
        servers: [`127.0.0.1:${sf.address().port}`],
        timeoutMs: 1000,
      }).score('127.0.0.4');
      expect(r).toMatchObject({ score: 0, errors: [{ zone: 'zen.test', kind: 'servfail' }] });
    } finally {
      sf.close();
    }
  });
});
