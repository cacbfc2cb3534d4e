/**
 * store.test: the behavioural suite, run unchanged against SqliteStore and RedisStore (a real Redis
 * from @moat/daemons): postscreen's pass cache (per-test expiry, retention, cleanup counts, DNSWL
 * trust), every Postgrey time rule with an injected clock, the AWL hour rule, approval, pending
 * list and maintenance; and that a second store instance (another process, a restart) sees it all.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { dnswlTrusted, passOld, validPasses } from './client-record.js';
import { DAY_MS, HOUR_MS, type GreylistQuery } from './types.js';
import { SQLITE_FILE, SqliteStore } from './sqlite-store.js';
import { GREY, T0, useBackends } from './test/backends.js';

const { backends } = useBackends();
const S = 1000;

describe.each(backends)('$name store', (backend) => {
  describe('screen: pass cache', () => {
    it('keeps one expiry per test per client', async () => {
      const store = await backend.fresh().open();
      expect(await store.getClient('192.0.2.1')).toBeUndefined();

      await store.recordPass('192.0.2.1', 'pregreet', DAY_MS, T0);
      await store.recordPass('192.0.2.1', 'dnsbl', HOUR_MS, T0 + 10 * S);
      const record = await store.getClient('192.0.2.1');
      expect(record).toEqual({
        ip: '192.0.2.1',
        passes: {
          pregreet: { passedAt: T0, expiresAt: T0 + DAY_MS },
          dnsbl: { passedAt: T0 + 10 * S, expiresAt: T0 + 10 * S + HOUR_MS },
        },
        lastSeen: T0 + 10 * S,
        latest: T0 + DAY_MS,
      });
      const tests = ['pregreet', 'dnsbl'];
      expect(passOld(record, tests, T0 + 30 * S)).toBe(true);
      // dnsbl expires first: no longer PASS OLD, but pregreet still holds.
      expect(passOld(record, tests, T0 + 10 * S + HOUR_MS)).toBe(false);
      expect(validPasses(record, T0 + 2 * HOUR_MS)).toEqual(['pregreet']);
      expect(await store.getClient('192.0.2.2')).toBeUndefined();
    });

    it('renews a pass, and a failed test removes only that pass', async () => {
      const store = await backend.fresh().open();
      await store.recordPass('192.0.2.1', 'pregreet', DAY_MS, T0);
      await store.recordPass('192.0.2.1', 'dnsbl', HOUR_MS, T0);
      await store.recordPass('192.0.2.1', 'dnsbl', HOUR_MS, T0 + 2 * HOUR_MS);
      expect((await store.getClient('192.0.2.1'))?.passes.dnsbl).toEqual({
        passedAt: T0 + 2 * HOUR_MS,
        expiresAt: T0 + 3 * HOUR_MS,
      });

      await store.recordFail('192.0.2.1', 'pregreet', T0 + 3 * HOUR_MS);
      const record = await store.getClient('192.0.2.1');
      expect(Object.keys(record?.passes ?? {})).toEqual(['dnsbl']);
      expect(record?.lastSeen).toBe(T0 + 3 * HOUR_MS);
      expect(record?.latest).toBe(T0 + 3 * HOUR_MS);

      // A client that only ever failed is still known (not NEW next time), with no passes.
      await store.recordFail('192.0.2.9', 'pregreet', T0);
      expect(await store.getClient('192.0.2.9')).toEqual({
        ip: '192.0.2.9',
        passes: {},
        lastSeen: T0,
        latest: T0,
      });
    });

    it('records DNSWL trust with its expiry', async () => {
      const store = await backend.fresh().open();
      await store.recordDnswl('198.51.100.7', -3, 10 * 60 * S, T0);
      const record = await store.getClient('198.51.100.7');
      expect(record?.dnswlTrust).toEqual({ score: -3, recordedAt: T0, expiresAt: T0 + 10 * 60 * S });
      expect(record?.passes).toEqual({});
      expect(dnswlTrusted(record, T0 + 60 * S)).toBe(true);
      expect(dnswlTrusted(record, T0 + 10 * 60 * S)).toBe(false);
      await store.recordDnswl('198.51.100.7', -1.5, HOUR_MS, T0 + HOUR_MS);
      expect((await store.getClient('198.51.100.7'))?.dnswlTrust).toEqual({
        score: -1.5,
        recordedAt: T0 + HOUR_MS,
        expiresAt: T0 + 2 * HOUR_MS,
      });
    });

    it('keeps expired entries for the retention time, then cleanup drops them and counts', async () => {
      const store = await backend.fresh().open({ retentionMs: 7 * DAY_MS });
      await store.recordPass('192.0.2.1', 'pregreet', DAY_MS, T0); // kept until T0+1d+7d
      await store.recordPass('192.0.2.2', 'pregreet', 30 * DAY_MS, T0); // kept until T0+37d
      await store.recordDnswl('192.0.2.3', -2, 3 * DAY_MS, T0); // kept until T0+10d
      await store.recordFail('192.0.2.4', 'dnsbl', T0 + 5 * DAY_MS); // kept until T0+12d

      // Expired but retained: still known, so not logged NEW again.
      expect(await store.getClient('192.0.2.1')).toBeDefined();
      expect(await store.cleanup(T0 + 2 * DAY_MS)).toEqual({ retained: 4, dropped: 0, skipped: false });
      expect(await store.cleanup(T0 + 8 * DAY_MS)).toEqual({ retained: 4, dropped: 0, skipped: false });
      expect(await store.cleanup(T0 + 8 * DAY_MS + 1)).toEqual({ retained: 3, dropped: 1, skipped: false });
      expect(await store.getClient('192.0.2.1')).toBeUndefined();
      expect(await store.getClient('192.0.2.2')).toBeDefined();
      expect(await store.cleanup(T0 + 13 * DAY_MS)).toEqual({ retained: 1, dropped: 2, skipped: false });
      expect(await store.cleanup(T0 + 40 * DAY_MS)).toEqual({ retained: 0, dropped: 1, skipped: false });
      expect(await store.getClient('192.0.2.2')).toBeUndefined();
    });

    it('cleans up more clients than one batch holds, all of them and their passes', async () => {
      const store = await backend.fresh().open({ retentionMs: DAY_MS });
      const ips = Array.from({ length: 1203 }, (_, i) => `10.${(i >> 8) & 255}.${i & 255}.1`);
      for (const ip of ips) await store.recordPass(ip, 'pregreet', HOUR_MS, T0);
      await store.recordPass('192.0.2.9', 'pregreet', 30 * DAY_MS, T0);
      expect(await store.cleanup(T0 + 2 * DAY_MS)).toEqual({ retained: 1, dropped: 1203, skipped: false });
      expect(await store.getClient(ips[0]!)).toBeUndefined();
      expect(await store.getClient(ips.at(-1)!)).toBeUndefined();
      // a client that comes back is new: no pass of its old life is left behind
      await store.recordFail(ips[700]!, 'dnsbl', T0 + 3 * DAY_MS);
      expect((await store.getClient(ips[700]!))?.passes ?? {}).toEqual({});
    });

    it('a renewed pass moves the retention deadline', async () => {
      const store = await backend.fresh().open({ retentionMs: DAY_MS });
      await store.recordPass('192.0.2.1', 'pregreet', HOUR_MS, T0);
      await store.recordPass('192.0.2.1', 'pregreet', HOUR_MS, T0 + 20 * HOUR_MS);
      expect(await store.cleanup(T0 + 30 * HOUR_MS)).toEqual({ retained: 1, dropped: 0, skipped: false });
      expect(await store.cleanup(T0 + 45 * HOUR_MS + 1)).toEqual({ retained: 0, dropped: 1, skipped: false });
    });

    it('is shared: another instance (replica, the other service, a restart) sees the same client', async () => {
      const where = backend.fresh();
      const screen = await where.open();
      const greylist = await where.open();
      await screen.recordPass('203.0.113.5', 'dnsbl', DAY_MS, T0);
      await greylist.recordDnswl('203.0.113.5', -4, DAY_MS, T0 + S);
      expect((await greylist.getClient('203.0.113.5'))?.passes.dnsbl?.expiresAt).toBe(T0 + DAY_MS);
      expect((await screen.getClient('203.0.113.5'))?.dnswlTrust?.score).toBe(-4);
      await greylist.greylistCheck('203.0.113.0/a@example.org/b@example.net', { now: T0, ...GREY });
      await screen.close();
      await greylist.close();

      const restarted = await where.open();
      expect((await restarted.getClient('203.0.113.5'))?.passes.dnsbl?.passedAt).toBe(T0);
      const again = await restarted.greylistCheck('203.0.113.0/a@example.org/b@example.net', {
        now: T0 + 400 * S,
        ...GREY,
      });
      expect(again).toEqual({
        action: 'pass',
        reason: 'triplet found',
        firstPass: true,
        delayedSeconds: 400,
      });
    });
  });

  describe('greylist: Postgrey time rules', () => {
    const key = '192.0.2.0/sender@example.org/rcpt@example.net';

    it('new, early retry with seconds missing, pass at exactly the delay, first pass flagged once', async () => {
      const store = await backend.fresh().open();
      const check = (now: number) => store.greylistCheck(key, { now, ...GREY });
      expect(await check(T0)).toEqual({ action: 'defer', reason: 'new', secondsLeft: 300 });
      expect(await check(T0 + 60 * S)).toEqual({ action: 'defer', reason: 'early-retry', secondsLeft: 240 });
      expect(await check(T0 + 299_500)).toEqual({ action: 'defer', reason: 'early-retry', secondsLeft: 1 });
      expect(await check(T0 + 300 * S)).toEqual({
        action: 'pass',
        reason: 'triplet found',
        firstPass: true,
        delayedSeconds: 300,
      });
      expect(await check(T0 + 400 * S)).toEqual({
        action: 'pass',
        reason: 'triplet found',
        firstPass: false,
        delayedSeconds: 400,
      });
      // Other triplets are independent.
      expect(await store.greylistCheck(`${key}x`, { now: T0 + 400 * S, ...GREY })).toMatchObject({
        reason: 'new',
      });
    });

    it('a first retry later than the retry window starts over; at exactly the window it passes', async () => {
      const store = await backend.fresh().open();
      const check = (k: string, now: number) => store.greylistCheck(k, { now, ...GREY });
      await check('late', T0);
      const late = T0 + GREY.retryWindowMs + 1;
      expect(await check('late', late)).toEqual({ action: 'defer', reason: 'new', secondsLeft: 300 });
      expect(await check('late', late + 100 * S)).toEqual({
        action: 'defer',
        reason: 'early-retry',
        secondsLeft: 200,
      });
      expect(await check('late', late + 300 * S)).toMatchObject({
        action: 'pass',
        firstPass: true,
        delayedSeconds: 300,
      });

      await check('edge', T0);
      expect(await check('edge', T0 + GREY.retryWindowMs)).toEqual({
        action: 'pass',
        reason: 'triplet found',
        firstPass: true,
        delayedSeconds: GREY.retryWindowMs / S,
      });

      // Once passed, the retry window no longer applies.
      expect(await check('edge', T0 + 10 * DAY_MS)).toMatchObject({ action: 'pass', firstPass: false });
    });

    it('records unseen for max-age expire', async () => {
      const store = await backend.fresh().open();
      const check = (k: string, now: number) => store.greylistCheck(k, { now, ...GREY });
      await check('a', T0);
      await check('a', T0 + 300 * S);
      const lastSeen = T0 + 300 * S;
      expect(await check('a', lastSeen + GREY.maxAgeMs)).toMatchObject({ action: 'pass', firstPass: false });
      const now = lastSeen + 2 * GREY.maxAgeMs + 1;
      expect(await check('a', now)).toEqual({ action: 'defer', reason: 'new', secondsLeft: 300 });
    });

    it('first-seen in the future is corrected to now', async () => {
      const store = await backend.fresh().open();
      const check = (now: number) => store.greylistCheck('k', { now, ...GREY });
      await check(T0 + HOUR_MS); // recorded while the clock was an hour ahead
      expect(await check(T0)).toEqual({ action: 'defer', reason: 'new', secondsLeft: 300 });
      expect(await check(T0 + 299 * S)).toEqual({ action: 'defer', reason: 'early-retry', secondsLeft: 1 });
      expect(await check(T0 + 300 * S)).toMatchObject({
        action: 'pass',
        firstPass: true,
        delayedSeconds: 300,
      });
    });

    it('AWL counts an exact client IP at most once per hour and expires after max-age', async () => {
      const store = await backend.fresh().open();
      const ip = '192.0.2.77';
      expect(await store.awlCount(ip, T0)).toBe(0);
      expect(await store.awlBump(ip, T0)).toBe(1);
      expect(await store.awlBump(ip, T0 + 30 * 60 * S)).toBe(1);
      expect(await store.awlBump(ip, T0 + HOUR_MS - 1)).toBe(1);
      expect(await store.awlBump(ip, T0 + HOUR_MS)).toBe(2);
      expect(await store.awlBump(ip, T0 + HOUR_MS + 1)).toBe(2);
      for (let h = 2; h <= 4; h++) await store.awlBump(ip, T0 + h * HOUR_MS);
      expect(await store.awlCount(ip, T0 + 4 * HOUR_MS)).toBe(5);
      expect(await store.awlCount('192.0.2.78', T0)).toBe(0); // per exact IP, not subnet

      const last = T0 + 4 * HOUR_MS;
      expect(await store.awlCount(ip, last + 35 * DAY_MS)).toBe(5);
      expect(await store.awlCount(ip, last + 35 * DAY_MS + 1)).toBe(0);
      expect(await store.awlBump(ip, last + 35 * DAY_MS + 1)).toBe(1);
      expect(await store.awlCount(ip, last + 36 * DAY_MS, { maxAgeMs: 2 * DAY_MS })).toBe(1);
      expect(await store.awlCount(ip, last + 38 * DAY_MS, { maxAgeMs: 2 * DAY_MS })).toBe(0);
    });

    it('lookup: screen trust (DNSWL, chosen tests), then the AWL, then the triplet, in one step', async () => {
      const store = await backend.fresh().open();
      const ask = (ip: string, now: number, o: Partial<GreylistQuery> = {}) =>
        store.greylistLookup({ ip, key: `${ip}/s@x.test/r@y.test`, now, awlClients: 5, ...GREY, ...o });
      const trust = { tests: ['pregreet', 'dnsbl'] };

      // DNSWL trust: negative score and unexpired; the triplet is not touched
      await store.recordDnswl('192.0.2.1', -2, HOUR_MS, T0);
      expect(await ask('192.0.2.1', T0 + S, { trust })).toEqual({ action: 'trusted', by: 'dnswl' });
      expect(await ask('192.0.2.1', T0 + S, { trust: { tests: [] } })).toEqual({
        action: 'trusted',
        by: 'dnswl',
      });
      expect(await store.listPending(10)).toEqual([]);
      expect(await ask('192.0.2.1', T0 + HOUR_MS, { trust })).toMatchObject({
        action: 'defer',
        reason: 'new',
      });
      await store.recordDnswl('192.0.2.2', 1, HOUR_MS, T0);
      expect(await ask('192.0.2.2', T0 + S, { trust })).toMatchObject({ action: 'defer', reason: 'new' });

      // every chosen test passed and unexpired; none chosen: DNSWL only; not asked: no trust at all
      await store.recordPass('192.0.2.3', 'pregreet', HOUR_MS, T0);
      expect(await ask('192.0.2.3', T0 + S, { trust })).toMatchObject({ action: 'defer', reason: 'new' });
      await store.recordPass('192.0.2.3', 'dnsbl', 10 * 60 * S, T0);
      expect(await ask('192.0.2.3', T0 + 2 * S, { trust })).toEqual({ action: 'trusted', by: 'screen' });
      expect(await ask('192.0.2.3', T0 + 3 * S, { trust: { tests: [] } })).toMatchObject({
        action: 'defer',
        reason: 'early-retry',
      });
      expect(await ask('192.0.2.3', T0 + 4 * S)).toMatchObject({ action: 'defer', reason: 'early-retry' });
      // dnsbl's pass expired: back to the triplet (seen since T0 + 1 s, so past the delay now)
      expect(await ask('192.0.2.3', T0 + 10 * 60 * S, { trust })).toMatchObject({
        action: 'pass',
        reason: 'triplet found',
      });

      // the AWL: at the threshold the client skips the triplet and this pass is counted (hourly)
      const ip = '192.0.2.4';
      for (let h = 0; h < 4; h++) await store.awlBump(ip, T0 + h * HOUR_MS);
      expect(await ask(ip, T0 + 4 * HOUR_MS - 1)).toMatchObject({ action: 'defer', reason: 'new' });
      await store.awlBump(ip, T0 + 4 * HOUR_MS);
      expect(await ask(ip, T0 + 4 * HOUR_MS + S)).toEqual({ action: 'awl', count: 5 });
      expect(await ask(ip, T0 + 5 * HOUR_MS)).toEqual({ action: 'awl', count: 6 });
      expect(await store.awlCount(ip, T0 + 5 * HOUR_MS)).toBe(6);
      expect(await ask(ip, T0 + 5 * HOUR_MS, { awlClients: 0, key: 'k0' })).toMatchObject({ reason: 'new' });
      expect(await ask(ip, T0 + 5 * HOUR_MS, { awlClients: 7, key: 'k7' })).toMatchObject({ reason: 'new' });

      // no key: only the client is asked about; the caller checks the triplet itself afterwards
      expect(await ask('192.0.2.5', T0, { key: undefined, trust })).toEqual({ action: 'unkeyed' });
      expect(await ask(ip, T0 + 5 * HOUR_MS, { key: undefined })).toEqual({ action: 'awl', count: 6 });
      expect(await store.listPending(10)).toHaveLength(5);

      // keyed, the triplet answers exactly as greylistCheck
      expect(await ask('192.0.2.6', T0)).toEqual({ action: 'defer', reason: 'new', secondsLeft: 300 });
      expect(await ask('192.0.2.6', T0 + 300 * S)).toEqual({
        action: 'pass',
        reason: 'triplet found',
        firstPass: true,
        delayedSeconds: 300,
      });
      expect(
        await store.greylistCheck('192.0.2.6/s@x.test/r@y.test', { now: T0 + 400 * S, ...GREY }),
      ).toEqual({
        action: 'pass',
        reason: 'triplet found',
        firstPass: false,
        delayedSeconds: 400,
      });
    });

    it('lookups of one turn go together (Redis: 8 a script), each answered in order as if alone', async () => {
      const store = await backend.fresh().open();
      await store.recordDnswl('192.0.2.9', -1, HOUR_MS, T0);
      const ask = (ip: string, key: string | undefined, now: number) =>
        store.greylistLookup({ ip, key, now, awlClients: 5, trust: { tests: [] }, ...GREY });
      const answers = await Promise.all([
        ...Array.from({ length: 300 }, (_, i) => ask(`10.0.${i >> 8}.${i & 255}`, `k${i}`, T0)),
        ask('192.0.2.9', 'trusted', T0),
        ask('192.0.2.1', 'k0', T0 + 60 * S), // the same triplet again, later in the same batch
        ask('192.0.2.2', undefined, T0),
      ]);
      expect(answers.slice(0, 300)).toEqual(
        Array.from({ length: 300 }, () => ({ action: 'defer', reason: 'new', secondsLeft: 300 })),
      );
      expect(answers.slice(300)).toEqual([
        { action: 'trusted', by: 'dnswl' },
        { action: 'defer', reason: 'early-retry', secondsLeft: 240 },
        { action: 'unkeyed' },
      ]);
      expect(await store.listPending(1000)).toHaveLength(300);
    });

    it('approve: a pending triplet passes on its next check, as a first pass; lists what is pending', async () => {
      const store = await backend.fresh().open();
      const check = (k: string, now: number) => store.greylistCheck(k, { now, ...GREY });
      await check('one', T0);
      await check('two', T0 + S);
      await check('three', T0 + 2 * S);
      await check('passed', T0);
      await check('passed', T0 + 300 * S);
      expect((await store.listPending(10)).map((p) => p.key)).toEqual(['three', 'two', 'one']);
      expect(await store.listPending(2)).toEqual([
        { key: 'three', firstSeen: T0 + 2 * S, lastSeen: T0 + 2 * S },
        { key: 'two', firstSeen: T0 + S, lastSeen: T0 + S },
      ]);

      expect(await store.approveTriplet('two', HOUR_MS, T0 + 10 * S)).toBe(true);
      expect((await store.listPending(10)).find((p) => p.key === 'two')).toEqual({
        key: 'two',
        firstSeen: T0 + S,
        lastSeen: T0 + S,
        approvedUntil: T0 + 10 * S + HOUR_MS,
      });
      expect(await check('two', T0 + 20 * S)).toEqual({
        action: 'pass',
        reason: 'triplet found',
        firstPass: true,
        delayedSeconds: 19,
      });
      expect(await check('two', T0 + 30 * S)).toMatchObject({ action: 'pass', firstPass: false });
      expect((await store.listPending(10)).map((p) => p.key)).toEqual(['three', 'one']);
      expect(await store.approveTriplet('passed', HOUR_MS, T0 + 400 * S)).toBe(false);

      // Approved before it was ever seen.
      expect(await store.approveTriplet('fresh', HOUR_MS, T0)).toBe(true);
      expect(await check('fresh', T0 + 5 * S)).toMatchObject({ action: 'pass', firstPass: true });

      // An approval that lapsed changes nothing.
      expect(await store.approveTriplet('one', 60 * S, T0 + 10 * S)).toBe(true);
      expect(await check('one', T0 + 120 * S)).toEqual({
        action: 'defer',
        reason: 'early-retry',
        secondsLeft: 180,
      });
    });

    it('maintenance deletes triplets unseen for max-age and never-passed ones past the retry window', async () => {
      const store = await backend.fresh().open();
      const check = (k: string, now: number) => store.greylistCheck(k, { now, ...GREY });
      const params = { maxAgeMs: GREY.maxAgeMs, retryWindowMs: GREY.retryWindowMs };
      await check('passed-old', T0);
      await check('passed-old', T0 + 300 * S);
      await check('pending-old', T0);
      await check('pending-approved', T0);
      await store.approveTriplet('pending-approved', 10 * DAY_MS, T0);
      await store.awlBump('192.0.2.1', T0);
      expect(await store.maintenance({ now: T0 + DAY_MS, ...params })).toEqual({ triplets: 0, awl: 0 });
      // Never passed and unseen for longer than the retry window: goes, unless approved meanwhile.
      expect(await store.maintenance({ now: T0 + 3 * DAY_MS, ...params })).toEqual({ triplets: 1, awl: 0 });
      expect((await store.listPending(10)).map((p) => p.key)).toEqual(['pending-approved']);

      await check('passed-recent', T0 + 10 * DAY_MS);
      await check('passed-recent', T0 + 10 * DAY_MS + 300 * S);
      await check('pending-recent', T0 + 10 * DAY_MS);
      await store.awlBump('192.0.2.2', T0 + 10 * DAY_MS);
      // The approval lapsed: the approved triplet goes too.
      expect(await store.maintenance({ now: T0 + 11 * DAY_MS, ...params })).toEqual({ triplets: 1, awl: 0 });
      expect((await store.listPending(10)).map((p) => p.key)).toEqual(['pending-recent']);

      // Past max-age since last seen: the passed triplet and the AWL entry go (and the pending one).
      const now = T0 + 300 * S + GREY.maxAgeMs + 1;
      expect(await store.maintenance({ now, ...params })).toEqual({ triplets: 2, awl: 1 });
      expect(await store.awlCount('192.0.2.1', T0)).toBe(0);
      expect(await store.awlCount('192.0.2.2', now)).toBe(1);
      expect(await store.listPending(10)).toEqual([]);
      expect(await check('passed-old', now)).toMatchObject({ reason: 'new' });
      expect(await check('passed-recent', now)).toMatchObject({ action: 'pass', firstPass: false });
    });

    it('maintenance walks every triplet, however many (SQLite: key ranges of 2,000 a transaction)', async () => {
      const store = await backend.fresh().open();
      const ask = (i: number, now: number) =>
        store.greylistLookup({ ip: `10.0.${i >> 8}.${i & 255}`, key: `t${i}`, now, awlClients: 0, ...GREY });
      // 6,500 triplets, first seen at T0; a third of them retried (passed) after the delay
      await Promise.all(Array.from({ length: 6500 }, (_, i) => ask(i, T0)));
      await Promise.all(
        Array.from({ length: 6500 }, (_, i) => i)
          .filter((i) => i % 3 === 0)
          .map((i) => ask(i, T0 + 400 * S)),
      );
      const params = { maxAgeMs: GREY.maxAgeMs, retryWindowMs: GREY.retryWindowMs };
      // past the retry window: every never-passed triplet goes, whatever its place in the key order
      expect(await store.maintenance({ now: T0 + 3 * DAY_MS, ...params })).toEqual({
        triplets: 4333,
        awl: 0,
      });
      expect(await store.listPending(10)).toEqual([]);
      expect(await store.maintenance({ now: T0 + 3 * DAY_MS, ...params })).toEqual({ triplets: 0, awl: 0 });
      expect(await ask(6498, T0 + 3 * DAY_MS)).toMatchObject({ action: 'pass', firstPass: false });
      expect(await ask(6499, T0 + 3 * DAY_MS)).toMatchObject({ action: 'defer', reason: 'new' });
    });
  });

  it('answers ping, and rejects with StoreError once closed', async () => {
    const store = await backend.fresh().open();
    await expect(store.ping()).resolves.toBeUndefined();
    await store.close();
    await expect(store.getClient('192.0.2.1')).rejects.toMatchObject({
      name: 'StoreError',
      kind: 'unavailable',
    });
  });
});

describe('SQLite file', () => {
  it('group commit: a lone write waits two more turns for company, 32 waiting writes commit at once', async () => {
    const store = await SqliteStore.open({ dataDir: fs.mkdtempSync(path.join(os.tmpdir(), 'moat-group-')) });
    try {
      // counts the turns of the event loop until p settles
      const turnsUntil = async (p: Promise<unknown>) => {
        let turns = 0;
        let done = false;
        void p.finally(() => (done = true));
        while (!done) {
          await new Promise((r) => setImmediate(r));
          turns++;
        }
        return turns;
      };
      const check = (k: string) => store.greylistCheck(k, { now: T0, ...GREY });
      expect(await turnsUntil(check('lone'))).toBe(3);
      expect(await turnsUntil(Promise.all(Array.from({ length: 32 }, (_, i) => check(`k${i}`))))).toBe(1);
      // all of them written
      expect(await store.listPending(100)).toHaveLength(33);
    } finally {
      await store.close();
    }
  });

  it('schema 3: a file of schema 2 loses its triplet index and keeps its triplets', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moat-schema-'));
    const old = new Database(path.join(dir, SQLITE_FILE));
    old.exec(`CREATE TABLE triplet (key TEXT PRIMARY KEY, first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL,
                passed INTEGER NOT NULL, approved_until INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
              CREATE INDEX triplet_pending ON triplet(passed, last_seen);
              INSERT INTO triplet VALUES ('10.0.0/s@x.test/r@y.test', ${T0}, ${T0}, 0, 0);
              PRAGMA user_version = 2;`);
    old.close();
    const store = await SqliteStore.open({ dataDir: dir });
    try {
      expect(
        await store.greylistCheck('10.0.0/s@x.test/r@y.test', { now: T0 + 400 * S, ...GREY }),
      ).toMatchObject({ action: 'pass', firstPass: true, delayedSeconds: 400 });
    } finally {
      await store.close();
    }
    const db = new Database(path.join(dir, SQLITE_FILE), { readonly: true });
    expect(db.pragma('user_version', { simple: true })).toBe(3);
    // the key is the table itself (WITHOUT ROWID): no index at all is left on it
    expect(
      db.prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'triplet'").all(),
    ).toEqual([]);
    db.close();
  });
});
