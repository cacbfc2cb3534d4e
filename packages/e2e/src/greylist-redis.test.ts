/**
 * Two greylist processes (replicas) on one Redis give one consistent answer: the same new triplet
 * asked of both at the same instant is deferred by both; after the delay the first pass (with its
 * X-Greylist) happens once, on whichever replica is asked first, and the other replica sees a triplet
 * that has already passed. Redis from MOAT_TEST_REDIS (daemons cli run) or started here.
 */
import fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startRedis, type DaemonHandle } from '@moat/daemons';
import { Chain, freePort, tmpDir, waitFor } from '@moat/testkit';
import { PolicyClient, policyRequest, startTinyDns, type TinyDns } from './greylist-support.js';

let redis: DaemonHandle | undefined;
let url: string;
let dns: TinyDns;
const replicas: { chain: Chain; policy: number }[] = [];

beforeAll(async () => {
  if (process.env.MOAT_TEST_REDIS) url = process.env.MOAT_TEST_REDIS;
  else {
    const dir = tmpDir('moat-redis-');
    fs.chmodSync(dir, 0o755);
    redis = await startRedis({ stateDir: dir });
    url = redis.address;
  }
  dns = await startTinyDns({});
  const prefix = `/${Math.floor(Math.random() * 16)}`; // a database of its own, usually
  for (let i = 0; i < 2; i++) {
    const policy = await freePort();
    const chain = await Chain.create({
      services: ['greylist'],
      config: {
        store: url.replace(/\/\d*$/, '') + prefix,
        dns: { servers: [dns.server], timeout: '1s' },
        greylist: { enabled: true, delay: '2s', policyListen: `127.0.0.1:${policy}` },
      },
    });
    replicas.push({ chain, policy });
  }
}, 60_000);

afterAll(async () => {
  await Promise.all(replicas.map((r) => r.chain.stop()));
  await redis?.stop();
  await dns?.close();
});

describe('two greylist replicas on one Redis', () => {
  it('agree: both defer, one first pass with X-Greylist, then passes everywhere', async () => {
    const [a, b] = await Promise.all(replicas.map((r) => PolicyClient.connect(r.policy)));
    try {
      const sender = `r${Date.now()}@remote.test`;
      const req = () => policyRequest('127.0.5.1', sender, 'bob@example.test');
      const answers = await Promise.all([a!.ask(req()), b!.ask(req())]);
      expect(answers.every((x) => x.startsWith('DEFER_IF_PERMIT Greylisted'))).toBe(true);
      const grab = (what: string) =>
        replicas.flatMap((r) =>
          r.chain
            .service('greylist')
            .logs.filter(
              (l) => l.msg.startsWith(`action=greylist, reason=${what}`) && l.msg.includes(sender),
            ),
        );
      await waitFor(
        () => grab('new').length + grab('early-retry').length >= 2 || undefined,
        5000,
        'both decisions logged',
      );
      // both deferred; the triplet is one record (a request stamped a few ms before the other replica's
      // first sight is logged `new` again, as Postgrey logs a first-seen in the future)
      expect(grab('new').length + grab('early-retry').length).toBe(2);
      await new Promise((r) => setTimeout(r, 2100));
      expect(await b!.ask(req())).toMatch(/^PREPEND X-Greylist: delayed [23] seconds/);
      expect(await a!.ask(req())).toBe('DUNNO');
      expect(await b!.ask(req())).toBe('DUNNO');
    } finally {
      a?.close();
      b?.close();
    }
  });
});
