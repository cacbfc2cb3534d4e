/**
 * failure.test: a store that cannot answer rejects fast with a StoreError, never a pass: Redis on a
 * closed port, Redis stopped mid-test (and back again), Redis paused (command timeout), SQLite
 * locked by another connection (busy timeout), a bad setting. Also that Redis records carry TTLs, so
 * Redis expires them itself, and that maintenance clears pending entries whose triplet expired.
 */
import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { Redis } from 'ioredis';
import { describe, expect, it } from 'vitest';
import { freePort, startRedis } from '@moat/daemons';
import { StoreError } from './errors.js';
import { openStore } from './open-store.js';
import { SQLITE_FILE } from './sqlite-store.js';
import { DAY_MS, HOUR_MS } from './types.js';
import { GREY, T0, useBackends } from './test/backends.js';

const { backends, redis, tmp } = useBackends();
const [sqlite, redisBackend] = backends as [(typeof backends)[0], (typeof backends)[0]];

/** Calls `call` (SQLite answers synchronously), expecting a StoreError of one of `kinds`; returns ms taken. */
async function rejectsWith(call: () => Promise<unknown>, kinds: string[]): Promise<number> {
  const started = Date.now();
  const err = await call().then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(StoreError);
  expect(kinds).toContain((err as StoreError).kind);
  return Date.now() - started;
}

describe('redis unavailable', () => {
  it('a closed port: open returns within timeoutMs, every call rejects fast with a StoreError', async () => {
    const port = await freePort();
    const started = Date.now();
    const store = await openStore(`redis://127.0.0.1:${port}`, { dataDir: tmp(), timeoutMs: 300 });
    expect(Date.now() - started).toBeLessThan(1000);
    try {
      const calls = [
        () => store.ping(),
        () => store.getClient('192.0.2.1'),
        () => store.recordPass('192.0.2.1', 'pregreet', DAY_MS, T0),
        () => store.greylistCheck('k', { now: T0, ...GREY }),
        () => store.awlBump('192.0.2.1', T0),
        () => store.cleanup(T0),
      ];
      for (const call of calls) expect(await rejectsWith(call, ['unavailable', 'timeout'])).toBeLessThan(500);
    } finally {
      await store.close();
    }
  });

  it('Redis stopped mid-test: calls fail fast, not hang; it recovers when Redis is back', async () => {
    const own = await startRedis({ stateDir: path.join(tmp(), 'redis-stop') });
    let restarted: Awaited<ReturnType<typeof startRedis>> | undefined;
    const store = await openStore(own.address, { dataDir: tmp(), timeoutMs: 400 });
    try {
      expect(await store.greylistCheck('k', { now: T0, ...GREY })).toMatchObject({ reason: 'new' });
      await own.stop();
      for (let i = 0; i < 3; i++) {
        const elapsed = await rejectsWith(
          () => store.greylistCheck('k', { now: T0 + 400_000, ...GREY }),
          ['unavailable', 'timeout'],
        );
        expect(elapsed).toBeLessThan(600);
      }
      await rejectsWith(() => store.ping(), ['unavailable', 'timeout']);

      restarted = await startRedis({ stateDir: path.join(tmp(), 'redis-stop'), port: own.port });
      const deadline = Date.now() + 8000;
      while (
        !(await store.ping().then(
          () => true,
          () => false,
        ))
      ) {
        expect(Date.now()).toBeLessThan(deadline);
        await new Promise((r) => setTimeout(r, 100));
      }
      // A fresh Redis (nothing persisted): the triplet starts over, as a lost record should.
      expect(await store.greylistCheck('k', { now: T0 + 400_000, ...GREY })).toMatchObject({ reason: 'new' });
    } finally {
      await store.close();
      await own.stop();
      await restarted?.stop();
    }
  }, 20_000);

  it('Redis not answering (CLIENT PAUSE): rejects with kind timeout within timeoutMs', async () => {
    const store = await redisBackend.fresh().open({ timeoutMs: 300 });
    const raw = new Redis(redis().address);
    try {
      await store.ping();
      await raw.call('CLIENT', 'PAUSE', '1500', 'ALL');
      const elapsed = await rejectsWith(() => store.greylistCheck('k', { now: T0, ...GREY }), ['timeout']);
      expect(elapsed).toBeGreaterThanOrEqual(250);
      expect(elapsed).toBeLessThan(800);
    } finally {
      await raw.call('CLIENT', 'UNPAUSE');
      raw.disconnect();
    }
    await expect(store.ping()).resolves.toBeUndefined();
  });
});

describe('sqlite busy', () => {
  it('another process holding the write lock: rejects with kind timeout after busy_timeout', async () => {
    const where = sqlite.fresh();
    const store = await where.open({ timeoutMs: 200 });
    await store.greylistCheck('k', { now: T0, ...GREY });
    const other = new Database(path.join(where.dataDir, SQLITE_FILE));
    try {
      other.exec('BEGIN IMMEDIATE');
      const elapsed = await rejectsWith(
        () => store.greylistCheck('k', { now: T0 + 400_000, ...GREY }),
        ['timeout'],
      );
      expect(elapsed).toBeGreaterThanOrEqual(150);
      expect(elapsed).toBeLessThan(1500);
      // Readers are not blocked by a writer in WAL mode.
      expect(await store.listPending(10)).toHaveLength(1);
      other.exec('ROLLBACK');
      expect(await store.greylistCheck('k', { now: T0 + 400_000, ...GREY })).toMatchObject({
        firstPass: true,
      });
    } finally {
      other.close();
    }
  });

  it('writes of one turn commit together, and one that fails does not undo the others', async () => {
    const store = await sqlite.fresh().open();
    const [a, bad, b] = await Promise.allSettled([
      store.greylistCheck('a', { now: T0, ...GREY }),
      store.recordPass('192.0.2.1', 'pregreet', -1, T0),
      store.greylistLookup({ ip: '192.0.2.2', key: 'b', now: T0, awlClients: 5, ...GREY }),
    ]);
    expect(a).toMatchObject({ status: 'fulfilled', value: { reason: 'new' } });
    expect(bad).toMatchObject({ status: 'rejected', reason: { kind: 'invalid' } });
    expect(b).toMatchObject({ status: 'fulfilled', value: { reason: 'new' } });
    expect((await store.listPending(10)).map((p) => p.key).sort()).toEqual(['a', 'b']);
    expect(await store.getClient('192.0.2.1')).toBeUndefined();
  });

  it('checkpoints the WAL on its worker thread, and the data survives a reopen', async () => {
    const where = sqlite.fresh();
    const store = await where.open();
    const file = path.join(where.dataDir, SQLITE_FILE);
    const before = fs.statSync(file).size;
    await Promise.all(
      Array.from({ length: 2000 }, (_, i) => store.greylistCheck(`key-${i}`, { now: T0, ...GREY })),
    );
    // far below this connection's own checkpoint threshold: only the worker copies pages into the file
    await expect.poll(() => fs.statSync(file).size, { timeout: 3000 }).toBeGreaterThan(before + 64 * 1024);
    await store.close();
    const again = await where.open();
    expect(await again.listPending(5000)).toHaveLength(2000);
  });

  it('uses WAL mode (readers never wait for the writer)', async () => {
    const where = sqlite.fresh();
    await where.open();
    const db = new Database(path.join(where.dataDir, SQLITE_FILE), { readonly: true });
    try {
      expect(db.pragma('journal_mode', { simple: true })).toBe('wal');
    } finally {
      db.close();
    }
  });
});

describe('settings', () => {
  it('chooses by the store setting and rejects unknown ones', async () => {
    expect((await openStore(undefined, { dataDir: path.join(tmp(), 'default') })).kind).toBe('sqlite');
    expect((await openStore('sqlite', { dataDir: path.join(tmp(), 'default') })).kind).toBe('sqlite');
    const r = await openStore(redis().address + '/1', { dataDir: tmp() });
    expect(r.kind).toBe('redis');
    await r.ping();
    await r.close();
    await expect(openStore('memcache://127.0.0.1', { dataDir: tmp() })).rejects.toMatchObject({
      kind: 'invalid',
    });
    // a URL it cannot read is named in the error (which is logged) without its password
    await expect(
      openStore('redis://moat:s3cret@127.0.0.1:notaport', { dataDir: tmp() }),
    ).rejects.toMatchObject({
      kind: 'invalid',
      message: 'bad Redis URL redis://moat:********@127.0.0.1:notaport: Invalid URL',
    });
    const s = await sqlite.fresh().open();
    await expect(s.recordPass('192.0.2.1', 'x', -1, T0)).rejects.toMatchObject({ kind: 'invalid' });
  });
});

describe('redis TTLs', () => {
  it('every record carries a TTL, so Redis expires it without a sweep', async () => {
    const where = redisBackend.fresh();
    const store = await where.open({ retentionMs: 7 * DAY_MS });
    const raw = new Redis(redis().address);
    const pttl = (key: string) => raw.pttl(where.prefix + key);
    try {
      await store.recordPass('192.0.2.1', 'pregreet', DAY_MS, T0);
      // Relative to the injected clock (T0); a few ms pass between the write and PTTL.
      expect(await pttl('client:192.0.2.1')).toBeCloseTo(8 * DAY_MS, -3);
      await store.greylistCheck('k', { now: T0, ...GREY });
      expect(await pttl('triplet:k')).toBeCloseTo(GREY.retryWindowMs, -3); // never passed: the retry window
      await store.greylistCheck('k', { now: T0 + 300_000, ...GREY });
      expect(await pttl('triplet:k')).toBeCloseTo(GREY.maxAgeMs, -3);
      await store.awlBump('192.0.2.1', T0, { maxAgeMs: 35 * DAY_MS });
      expect(await pttl('awl:192.0.2.1')).toBeCloseTo(35 * DAY_MS, -3);
    } finally {
      raw.disconnect();
    }
  });

  it('a lookup that fails inside the batch script fails alone', async () => {
    const where = redisBackend.fresh();
    const store = await where.open();
    const raw = new Redis(redis().address);
    try {
      await raw.set(`${where.prefix}awl:192.0.2.66`, 'not a hash');
      const ask = (ip: string) =>
        store.greylistLookup({ ip, key: `${ip}/a/b`, now: T0, awlClients: 5, ...GREY });
      const [before, bad, after] = await Promise.allSettled([
        ask('192.0.2.65'),
        ask('192.0.2.66'),
        ask('192.0.2.67'),
      ]);
      expect(before).toMatchObject({ status: 'fulfilled', value: { reason: 'new' } });
      expect(bad).toMatchObject({ status: 'rejected', reason: { name: 'StoreError' } });
      expect((bad as PromiseRejectedResult).reason.message).toMatch(/WRONGTYPE/);
      expect(after).toMatchObject({ status: 'fulfilled', value: { reason: 'new' } });
    } finally {
      raw.disconnect();
    }
  });

  it('maintenance drops pending entries whose triplet Redis already expired', async () => {
    const where = redisBackend.fresh();
    const store = await where.open();
    const raw = new Redis(redis().address);
    try {
      await store.greylistCheck('gone', { now: T0, ...GREY });
      await store.greylistCheck('kept', { now: T0 + 3 * DAY_MS, ...GREY });
      await raw.del(`${where.prefix}triplet:gone`); // as its TTL would
      expect(await raw.zcard(`${where.prefix}pending`)).toBe(2);
      await store.maintenance({
        now: T0 + 3 * DAY_MS + HOUR_MS,
        maxAgeMs: GREY.maxAgeMs,
        retryWindowMs: GREY.retryWindowMs,
      });
      expect(await raw.zrange(`${where.prefix}pending`, 0, -1)).toEqual(['kept']);
    } finally {
      raw.disconnect();
    }
  });
});
