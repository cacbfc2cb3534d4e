/**
 * engine.test: Postgrey's time rules, whitelists, trust, AWL, SPF keying and the store-down answer,
 * on a real SQLite store with an injected clock.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { openStore, type ReputationStore } from '@moat/reputation';
import { GreylistEngine, postgreyLine, type EngineSettings } from './engine.js';
import type { SpfChecker } from './spf.js';
import { ENGINE_SETTINGS } from '../test/settings.js';
import { compileClientWhitelist, compileRecipientWhitelist } from './whitelist.js';

const T0 = Date.UTC(2026, 0, 5, 12, 0, 0);
const S = 1000;
const DAY = 86_400 * S;

const SETTINGS = ENGINE_SETTINGS;

let store: ReputationStore;
let now = T0;
let dir: string;

beforeEach(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moat-engine-'));
  store = await openStore('sqlite', { dataDir: dir });
  now = T0;
});
afterEach(async () => {
  await store.close().catch(() => undefined);
  fs.rmSync(dir, { recursive: true, force: true });
});

function engine(
  o: {
    settings?: Partial<EngineSettings>;
    clients?: string[];
    rcpts?: string[];
    spf?: Partial<SpfChecker>;
  } = {},
) {
  return new GreylistEngine(
    { ...SETTINGS, ...o.settings },
    {
      store,
      clients: { current: compileClientWhitelist(o.clients ?? []) },
      recipients: { current: compileRecipientWhitelist(o.rcpts ?? []) },
      spf: o.spf as SpfChecker | undefined,
      clock: () => now,
    },
  );
}

const req = (ip = '192.0.2.10', sender = 'alice@remote.test', recipient = 'bob@example.test') => ({
  clientAddress: ip,
  sender,
  recipient,
});

describe('time rules (Postgrey)', () => {
  it('defers a new triplet, defers an early retry with the seconds missing, passes at the delay with one header', async () => {
    const e = engine();
    const first = await e.decide(req());
    expect(first).toMatchObject({ action: 'greylist', reason: 'new', secondsLeft: 300 });
    expect(first.action === 'greylist' && first.text).toBe(
      'Greylisted, see http://postgrey.schweikert.ch/help/example.test.html',
    );
    expect(postgreyLine(first, req())).toBe(
      'action=greylist, reason=new, client_name=unknown, client_address=192.0.2.10, sender=alice@remote.test, recipient=bob@example.test',
    );
    now += 100 * S;
    expect(await e.decide(req())).toMatchObject({
      action: 'greylist',
      reason: 'early-retry (200s missing)',
      secondsLeft: 200,
    });
    now += 200 * S;
    const pass = await e.decide(req('192.0.2.99'));
    expect(pass).toMatchObject({ action: 'pass', reason: 'triplet found', delay: 300 });
    expect(pass.action === 'pass' && pass.header).toMatch(
      /^X-Greylist: delayed 300 seconds by moat-greylist at mx\.example\.test; \w{3}, \d+ \w{3} 2026 12:05:00 \+0000$/,
    );
    expect(postgreyLine(pass, req())).toMatch(/^action=pass, reason=triplet found, delay=300, /);
    now += 10 * S;
    const later = await e.decide(req());
    expect(later).toMatchObject({ action: 'pass', reason: 'triplet found' });
    expect(later.action === 'pass' && later.header).toBeUndefined();
  });

  it('starts over when the first retry comes after the retry window; expires after max-age', async () => {
    const e = engine();
    await e.decide(req());
    now += 2 * DAY + S;
    expect(await e.decide(req())).toMatchObject({ action: 'greylist', reason: 'new' });
    now += 300 * S;
    expect(await e.decide(req())).toMatchObject({ action: 'pass', reason: 'triplet found' });
    now += 35 * DAY + S;
    expect(await e.decide(req())).toMatchObject({ action: 'greylist', reason: 'new' });
  });

  it('fills %s and %r into greylist.text', async () => {
    const e = engine({ settings: { text: 'Come back in %s seconds to %r' } });
    expect(await e.decide(req())).toMatchObject({ text: 'Come back in 300 seconds to example.test' });
  });
});

describe('whitelists, trust and AWL', () => {
  it('passes whitelisted clients (name, address) and recipients without touching the store', async () => {
    const e = engine({ clients: ['trusted.test', '198.51.100.0/24'], rcpts: ['postmaster@'] });
    expect(await e.decide({ ...req(), clientName: 'mx1.trusted.test' })).toMatchObject({
      action: 'pass',
      reason: 'client whitelist',
      entry: 'trusted.test',
    });
    expect(await e.decide(req('198.51.100.7'))).toMatchObject({ action: 'pass', reason: 'client whitelist' });
    expect(await e.decide(req(undefined, undefined, 'postmaster@example.test'))).toMatchObject({
      action: 'pass',
      reason: 'recipient whitelist',
    });
    expect(await store.listPending(10)).toEqual([]);
  });

  it('skips greylisting for a client screen trusted through DNSWL (negative score, unexpired)', async () => {
    await store.recordDnswl('192.0.2.10', -5, 3_600_000, now);
    expect(await engine().decide(req())).toMatchObject({ action: 'pass', reason: 'client trusted (dnswl)' });
    expect(await engine({ settings: { trustScreen: false } }).decide(req())).toMatchObject({
      action: 'greylist',
    });
    now += 3_600_000 + 1;
    expect(await engine().decide(req(undefined, 'x@y.test'))).toMatchObject({ action: 'greylist' });
  });

  it('whitelists a client after 5 first passes counted at most once an hour (client AWL)', async () => {
    const e = engine();
    for (let i = 0; i < 5; i++) {
      const r = req('192.0.2.10', `sender${String.fromCharCode(97 + i)}@remote.test`);
      expect(await e.decide(r)).toMatchObject({ action: 'greylist', reason: 'new' });
      now += 300 * S;
      expect(await e.decide(r)).toMatchObject({ action: 'pass', reason: 'triplet found' });
      // a second first pass within the same hour does not count
      if (i === 0) {
        const r2 = req('192.0.2.10', 'same-hour@remote.test');
        await e.decide(r2);
        now += 300 * S;
        await e.decide(r2);
        expect(await store.awlCount('192.0.2.10', now)).toBe(1);
      }
      now += 3_600_000;
    }
    expect(await e.decide(req('192.0.2.10', 'brand-new@remote.test'))).toMatchObject({
      action: 'pass',
      reason: 'client AWL',
    });
    // per exact address: its neighbour is still greylisted
    expect(await e.decide(req('192.0.2.11', 'brand-new@remote.test'))).toMatchObject({ action: 'greylist' });
  });
});

describe('SPF keying', () => {
  it('keys on the SPF-authorised domain, so a retry from another network of the pool passes', async () => {
    const spf = { check: async () => ({ result: 'pass', domain: 'pool.test' }) };
    const e = engine({ spf });
    expect(await e.decide(req('192.0.2.10', 'news@pool.test'))).toMatchObject({
      action: 'greylist',
      reason: 'new',
      keyedOn: 'spf:pool.test',
      key: 'spf:pool.test/news@pool.test/bob@example.test',
    });
    now += 300 * S;
    expect(await e.decide(req('203.0.113.50', 'news@pool.test'))).toMatchObject({
      action: 'pass',
      reason: 'triplet found',
      keyedOn: 'spf:pool.test',
    });
  });
  it('falls back to the client network when SPF does not pass', async () => {
    const spf = { check: async () => ({ result: 'softfail', domain: 'pool.test' }) };
    const d = await engine({ spf }).decide(req('192.0.2.10', 'news@pool.test'));
    expect(d).toMatchObject({ action: 'greylist', key: '192.0.2.0/news@pool.test/bob@example.test' });
  });
});

describe('operator approval', () => {
  it('a pending triplet approved passes at once, as a first pass with X-Greylist', async () => {
    const e = engine();
    await e.decide(req());
    expect(
      await store.approveTriplet(
        e.networkKey('192.0.2.10', 'alice@remote.test', 'bob@example.test'),
        DAY,
        now,
      ),
    ).toBe(true);
    now += 5 * S;
    const d = await e.decide(req());
    expect(d).toMatchObject({ action: 'pass', reason: 'triplet found', delay: 5 });
    expect(d.action === 'pass' && d.header).toBeTruthy();
  });
});

describe('store failure', () => {
  it('is a tempfail, never a pass', async () => {
    const e = engine();
    await store.close();
    expect(await e.decide(req())).toMatchObject({ action: 'tempfail', reason: 'store error' });
  });
});
