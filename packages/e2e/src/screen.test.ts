/**
 * screen as postscreen, end to end: the whole chain as processes, a real rbldnsd on loopback serving
 * the test zones (weights, filters, IPv6, a DNSWL, an error-code answer, a secret zone behind the reply
 * map, a zone that fails its test points), and clients bound to different 127.x source addresses.
 * Each action (ignore, enforce, drop) is checked with the exact reply lines and postscreen's log words;
 * screen is restarted with a new moat.yaml between action sets, which also proves that the pass cache
 * (SQLite under dataDir) survives a restart.
 */
import fs from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startRbldnsd, writeZone, type RbldnsdHandle } from '@moat/daemons';
import { SqliteStore } from '@moat/reputation';
import { Chain, SmtpClient, swaks, tmpDir, waitFor, type LogLine } from '@moat/testkit';

const SITES = [
  'zen.test=127.0.0.[2..11]*3',
  'zen.test=127.0.0.10',
  'quota.test*3',
  'broken.test*5',
  'k3y.dq.test*4',
  'dnswl.test=127.0.[0..255].[1..3]*-5',
];

let dns: RbldnsdHandle;
let chain: Chain;
let stateDir: string;

function screenConfig(extra: Record<string, unknown>): Record<string, unknown> {
  return {
    greetWait: '1s',
    dnsblSites: SITES,
    dnsblThreshold: 3,
    dnsblAllowlistThreshold: -1,
    dnsblTimeout: '2s',
    dnsblReplyMap: { 'k3y.dq.test': 'dq.public' },
    accessList: [],
    ...extra,
  };
}

/** Restarts screen with a new screen section (the rest of moat.yaml unchanged). */
async function restartScreen(extra: Record<string, unknown>): Promise<void> {
  await chain.service('screen').stop();
  const config = { ...chain.config, screen: { ...(chain.config.screen as object), ...screenConfig(extra) } };
  fs.writeFileSync(chain.configFile, YAML.stringify(config));
  await chain.start('screen');
}

function screenLog(re: RegExp, timeoutMs = 5000): Promise<LogLine> {
  return chain.service('screen').waitForLog((l) => re.test(l.msg), timeoutMs, String(re));
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** What screen's pass cache (the chain's SQLite store) holds for a client. */
async function cachedClient(ip: string) {
  const store = await SqliteStore.open({ dataDir: chain.dataDir });
  try {
    return await store.getClient(ip);
  } finally {
    await store.close();
  }
}

function connect(ip: string): Promise<SmtpClient> {
  return SmtpClient.connect(chain.ports.screen, { localAddress: ip });
}

beforeAll(async () => {
  stateDir = tmpDir('moat-screen-e2e-');
  const dir = path.join(stateDir, 'rbldnsd');
  fs.mkdirSync(dir);
  writeZone(dir, 'zen4.zone', [
    '$TTL 300',
    '127.0.0.2 :127.0.0.2:test point',
    '127.0.5.0/24 :127.0.0.4:listed in sbl $',
    '127.0.7.0/24 :127.0.0.10:listed in pbl $',
    '127.0.8.14 :127.0.0.4:also in sbl',
  ]);
  writeZone(dir, 'zen6.zone', ['2001:db8::25 :127.0.0.4:v6 listed']);
  writeZone(dir, 'quota.zone', ['127.0.0.2 :127.0.0.2:', '127.0.8.12 :127.255.255.254:over quota']);
  writeZone(dir, 'broken.zone', ['127.0.8.13 :127.0.0.2:listed, but no test point']);
  writeZone(dir, 'dq.zone', ['127.0.0.2 :127.0.0.2:', '127.0.8.14 :127.0.0.2:secret']);
  writeZone(dir, 'dnswl.zone', ['127.0.0.2 :127.0.10.0:', '127.0.9.0/24 :127.0.10.3:trusted']);
  dns = await startRbldnsd({
    stateDir,
    dir,
    zones: [
      { name: 'zen.test', type: 'ip4set', file: 'zen4.zone' },
      { name: 'zen.test', type: 'ip6trie', file: 'zen6.zone' },
      { name: 'quota.test', type: 'ip4set', file: 'quota.zone' },
      { name: 'broken.test', type: 'ip4set', file: 'broken.zone' },
      { name: 'k3y.dq.test', type: 'ip4set', file: 'dq.zone' },
      { name: 'dnswl.test', type: 'ip4set', file: 'dnswl.zone' },
    ],
  });
  chain = await Chain.create({
    config: { dns: { servers: [dns.address] }, screen: screenConfig({ dnsblAction: 'enforce' }) },
  });
  // the zones' test points are checked at start: broken.test must be out of use before clients come
  await screenLog(/^warning: dnsbl zone broken\.test is not used/);
}, 60_000);

afterAll(async () => {
  await chain?.stop();
  await dns?.stop();
});

describe('screen with dnsblAction enforce (greetAction ignore)', () => {
  it('a clean client: teaser, greet wait, PASS NEW, spliced; its mail reaches the Maildir; then PASS OLD', async () => {
    const r = await swaks([
      '--server',
      `127.0.0.1:${chain.ports.screen}`,
      '--local-interface',
      '127.0.8.30',
      '--ehlo',
      'clean.remote.test',
      '--from',
      'alice@remote.test',
      '--to',
      'bob@example.test',
      '--header',
      'Subject: through screen',
    ]);
    expect(r.exitCode, r.output).toBe(0);
    expect(r.replies[0]).toBe('220-mx.example.test ESMTP');
    expect(r.replies[1]).toMatch(/^220 mx\.example\.test ESMTP/);
    expect(r.last).toBe('221 2.0.0 Bye');
    const pass = await screenLog(/^PASS NEW \[127\.0\.8\.30\]:\d+$/);
    expect(pass.client).toBe('127.0.8.30');
    await screenLog(/^CONNECT from \[127\.0\.8\.30\]:\d+ to \[127\.0\.0\.1\]:\d+$/);
    await chain.waitForMail('bob@example.test');

    // a returning client is spliced at once: no teaser, no wait
    const started = Date.now();
    const c = await connect('127.0.8.30');
    const banner = await c.read();
    expect(banner.lines).toHaveLength(1);
    expect(banner.text).toMatch(/^220 mx\.example\.test ESMTP/);
    expect(Date.now() - started).toBeLessThan(500);
    await c.quit();
    await screenLog(/^PASS OLD \[127\.0\.8\.30\]:\d+$/);
  });

  it('a listed client gets the engine: 220, EHLO, MAIL, then 550 at every RCPT, logged as NOQUEUE', async () => {
    const c = await connect('127.0.5.1');
    const teaser = await c.read(3000);
    expect(teaser.lines).toEqual(['220-mx.example.test ESMTP', '220 mx.example.test ESMTP']);
    const ehlo = await c.cmd('EHLO listed.remote.test');
    expect(ehlo.code).toBe(250);
    expect(ehlo.lines).not.toContain('250-PIPELINING');
    expect((await c.cmd('MAIL FROM:<spam@remote.test>')).text).toBe('250 2.1.0 Ok');
    expect((await c.cmd('RCPT TO:<bob@example.test>')).text).toBe(
      '550 5.7.1 Service unavailable; client [127.0.5.1] blocked using zen.test',
    );
    expect((await c.cmd('DATA')).text).toBe('554 5.5.1 Error: no valid recipients');
    expect((await c.cmd('QUIT')).text).toBe('221 2.0.0 Bye');
    const rank = await screenLog(/^DNSBL rank 3 for \[127\.0\.5\.1\]:\d+$/);
    expect(rank.score).toBe(3);
    const nq = await screenLog(/^NOQUEUE: reject: RCPT from \[127\.0\.5\.1\]:\d+: /);
    expect(nq.msg).toMatch(
      /^NOQUEUE: reject: RCPT from \[127\.0\.5\.1\]:\d+: 550 5\.7\.1 Service unavailable; client \[127\.0\.5\.1\] blocked using zen\.test; from=<spam@remote\.test>, to=<bob@example\.test>, proto=ESMTP, helo=<listed\.remote\.test>$/,
    );
    await screenLog(/^DISCONNECT \[127\.0\.5\.1\]:\d+$/);
  });

  it('weights, filters and zones: the reply names the largest weight after the reply map; error codes and broken zones never count', async () => {
    const rcpt = async (ip: string) => {
      const c = await connect(ip);
      const first = await c.read(3000);
      if (first.code !== 220) return first.text;
      await c.cmd('HELO x.remote.test');
      await c.cmd('MAIL FROM:<a@remote.test>');
      const r = await c.cmd('RCPT TO:<bob@example.test>');
      c.destroy();
      return r.text;
    };
    const [pbl, secret, quota, broken] = await Promise.all([
      rcpt('127.0.7.1'),
      rcpt('127.0.8.14'),
      rcpt('127.0.8.12'),
      rcpt('127.0.8.13'),
    ]);
    // 127.0.0.10 matches both zen.test patterns: 3 + 1
    expect(pbl).toBe('550 5.7.1 Service unavailable; client [127.0.7.1] blocked using zen.test');
    await screenLog(/^DNSBL rank 4 for \[127\.0\.7\.1\]:\d+$/);
    // zen 3 + secret zone 4: named by its public name
    expect(secret).toBe('550 5.7.1 Service unavailable; client [127.0.8.14] blocked using dq.public');
    await screenLog(/^DNSBL rank 7 for \[127\.0\.8\.14\]:\d+$/);
    expect(JSON.stringify(chain.service('screen').logs)).not.toContain('k3y');
    // 127.255.255.254 is an error code: the zone is put out of use, the client is not blocked
    expect(quota).toMatch(/^2\d\d /);
    await screenLog(/^warning: dnsbl zone quota\.test is not used: answered 127\.255\.255\.254/);
    await screenLog(/^PASS NEW \[127\.0\.8\.12\]:\d+$/);
    // broken.test failed its test points at start: its listing does not count
    expect(broken).toMatch(/^2\d\d /);
    await screenLog(/^PASS NEW \[127\.0\.8\.13\]:\d+$/);
    // and both are exposed for monitoring, secret names only by their public names
    const statusFile = path.join(chain.dataDir, 'screen', 'dnsbl-status.json');
    const status = await waitFor(
      () => {
        if (!fs.existsSync(statusFile)) return undefined;
        const s = JSON.parse(fs.readFileSync(statusFile, 'utf8')) as {
          zones: { name: string; state: string }[];
        };
        return s.zones.find((z) => z.name === 'quota.test')?.state === 'broken' ? s : undefined;
      },
      15_000,
      'dnsbl-status.json to show quota.test broken',
    );
    expect(status.zones.find((z) => z.name === 'broken.test')?.state).toBe('broken');
    expect(JSON.stringify(status)).not.toContain('k3y');
    // a pass given while a zone is out of use is short (dnsblMinTtl, 60s), not the answers' TTL: the
    // client is looked up again soon, when the zone may be back
    const ttl = async (ip: string, test: string) => {
      const p = (await cachedClient(ip))?.passes[test];
      return p ? Math.round((p.expiresAt - p.passedAt) / 1000) : undefined;
    };
    expect(await ttl('127.0.8.12', 'dnsbl')).toBe(60);
  });

  it('a DNSWL-trusted client ends the wait early and passes every test', async () => {
    const started = Date.now();
    const c = await connect('127.0.9.9');
    const banner = await c.read(3000);
    expect(banner.lines[0]).toBe('220-mx.example.test ESMTP');
    expect(banner.text).toMatch(/^220 mx\.example\.test ESMTP/);
    expect(Date.now() - started).toBeLessThan(800);
    await c.quit();
    await screenLog(/^PASS NEW \[127\.0\.9\.9\]:\d+$/);
    // it sat through no wait: its pregreet pass lasts as long as the DNSWL answer, not greetTtl (1d)
    const passes = (await cachedClient('127.0.9.9'))!.passes;
    expect(passes.pregreet!.expiresAt - passes.pregreet!.passedAt).toBe(
      passes.dnsbl!.expiresAt - passes.dnsbl!.passedAt,
    );
    expect(passes.pregreet!.expiresAt - passes.pregreet!.passedAt).toBeLessThan(24 * 3600_000);
  });

  it('a pregreeter (greetAction ignore) is logged and spliced with its bytes; no pass is cached', async () => {
    const c = await connect('127.0.6.1');
    await sleep(200);
    c.write('EHLO early.remote.test\r\n');
    const banner = await c.read(3000);
    expect(banner.lines[0]).toBe('220-mx.example.test ESMTP');
    expect(banner.text).toMatch(/^220 mx\.example\.test ESMTP/);
    const ehlo = await c.read(3000);
    expect(ehlo.code).toBe(250);
    await c.quit();
    const line = await screenLog(
      /^PREGREET 24 after \d+\.\d\d from \[127\.0\.6\.1\]:\d+: EHLO early\.remote\.test\\r\\n$/,
    );
    expect(line.count).toBe(24);
    expect(chain.service('screen').find((l) => /^PASS NEW \[127\.0\.6\.1\]/.test(l.msg))).toBeUndefined();
  });
});

describe('screen with drop and enforce for pregreet, drop for DNSBL (after a restart)', () => {
  beforeAll(async () => {
    await restartScreen({ dnsblAction: 'drop', greetAction: 'enforce' });
  });

  it('the pass cache survived the restart (SQLite under dataDir)', async () => {
    const c = await connect('127.0.8.30');
    expect((await c.read()).text).toMatch(/^220 mx\.example\.test ESMTP/);
    await c.quit();
    await screenLog(/^PASS OLD \[127\.0\.8\.30\]:\d+$/);
  });

  it('a listed client gets 521 after the wait, and is disconnected', async () => {
    const c = await connect('127.0.5.2');
    const r = await c.read(3000);
    expect(r.lines).toEqual([
      '220-mx.example.test ESMTP',
      '521 5.7.1 Service unavailable; client [127.0.5.2] blocked using zen.test',
    ]);
    await waitFor(() => c.closed || undefined, 3000, 'the connection closed');
    await screenLog(/^DNSBL rank 3 for \[127\.0\.5\.2\]:\d+$/);
  });

  it('a pregreeter under enforce gets no 220, and 550 5.5.1 at RCPT', async () => {
    const c = await connect('127.0.6.2');
    await sleep(200);
    c.write('EHLO early.remote.test\r\n');
    // no 220 for a pregreeter: the teaser line runs straight into the EHLO reply
    const ehlo = await c.read(3000);
    expect(ehlo.lines).toEqual([
      '220-mx.example.test ESMTP',
      '250-mx.example.test',
      '250-SIZE',
      '250-ENHANCEDSTATUSCODES',
      '250-8BITMIME',
      '250 SMTPUTF8',
    ]);
    expect((await c.cmd('MAIL FROM:<a@remote.test>')).text).toBe('250 2.1.0 Ok');
    expect((await c.cmd('RCPT TO:<bob@example.test>')).text).toBe('550 5.5.1 Protocol error');
    await c.quit();
    await screenLog(
      /^PREGREET 24 after \d+\.\d\d from \[127\.0\.6\.2\]:\d+: EHLO early\.remote\.test\\r\\n$/,
    );
    await screenLog(
      /^NOQUEUE: reject: RCPT from \[127\.0\.6\.2\]:\d+: 550 5\.5\.1 Protocol error; from=<a@remote\.test>, to=<bob@example\.test>, proto=ESMTP, helo=<early\.remote\.test>$/,
    );
  });

  it('the enforce engine closes after commandCountLimit commands', async () => {
    const c = await connect('127.0.6.3');
    await sleep(200);
    c.write('NOOP\r\n');
    expect((await c.read(3000)).lines).toEqual(['220-mx.example.test ESMTP', '250 2.0.0 Ok']);
    const replies = [];
    for (let i = 0; i < 20; i++) replies.push((await c.cmd('NOOP')).text);
    expect(replies.slice(0, 18).every((r) => r === '250 2.0.0 Ok')).toBe(true);
    expect(replies[19]).toBe('421 4.7.0 mx.example.test Error: too many commands');
    await screenLog(/^COMMAND COUNT LIMIT from \[127\.0\.6\.3\]:\d+ after NOOP$/);
  });
});

describe('screen with greetAction drop and the access list', () => {
  beforeAll(async () => {
    fs.writeFileSync(path.join(stateDir, 'access.cidr'), '');
    await restartScreen({
      greetAction: 'drop',
      accessAction: 'drop',
      accessList: [
        'permit 127.0.10.0/24',
        'reject 127.0.11.0/24',
        'dunno 127.0.12.1',
        `cidr:${path.join(stateDir, 'access.cidr')}`,
      ],
    });
  });

  it('a pregreeter under drop gets 521 5.5.1 at once', async () => {
    const c = await connect('127.0.6.4');
    await sleep(200);
    const t = Date.now();
    c.write('HELO x\r\n');
    expect((await c.read(3000)).lines).toEqual(['220-mx.example.test ESMTP', '521 5.5.1 Protocol error']);
    expect(Date.now() - t).toBeLessThan(500);
    await screenLog(/^PREGREET 8 after \d+\.\d\d from \[127\.0\.6\.4\]:\d+: HELO x\\r\\n$/);
  });

  it('permit: ALLOWLISTED, spliced at once even when DNSBL-listed; reject: DENYLISTED and 521', async () => {
    const started = Date.now();
    const ok = await connect('127.0.10.5');
    expect((await ok.read()).text).toMatch(/^220 mx\.example\.test ESMTP/);
    expect(Date.now() - started).toBeLessThan(500);
    await ok.quit();
    await screenLog(/^ALLOWLISTED \[127\.0\.10\.5\]:\d+$/);

    const bad = await connect('127.0.11.5');
    expect((await bad.read()).text).toBe('521 5.3.2 Service currently unavailable');
    await screenLog(/^DENYLISTED \[127\.0\.11\.5\]:\d+$/);
  });

  it('a cidr: table file is re-read when it changes', async () => {
    const file = path.join(stateDir, 'access.cidr');
    const c1 = await connect('127.0.13.1');
    expect((await c1.read(3000)).lines[0]).toBe('220-mx.example.test ESMTP');
    c1.destroy();
    fs.writeFileSync(file, '# operators edit this\n127.0.13.0/24 reject\n');
    await new Promise((r) => setTimeout(r, 1100));
    const c2 = await connect('127.0.13.2');
    expect((await c2.read(3000)).lines).toEqual(['521 5.3.2 Service currently unavailable']);
    await screenLog(/^DENYLISTED \[127\.0\.13\.2\]:\d+$/);
  });
});

describe('screen with greetAction drop and dnsblAction drop', () => {
  beforeAll(async () => {
    await restartScreen({
      greetAction: 'drop',
      dnsblAction: 'drop',
      accessList: ['reject 127.0.14.0/24'],
      accessAction: 'ignore',
    });
  });

  it('a denylisted client (accessAction ignore) is screened and spliced, and nothing of it is cached', async () => {
    const c = await connect('127.0.14.1');
    const banner = await c.read(3000);
    expect(banner.text).toMatch(/^220 mx\.example\.test ESMTP/);
    await c.quit();
    await screenLog(/^DENYLISTED \[127\.0\.14\.1\]:\d+$/);
    // postscreen: a client on the permanent lists never uses the cache; it passed every test here
    expect(await cachedClient('127.0.14.1')).toBeUndefined();
  });

  it('a listed client whose pregreet pass is cached cannot talk its way past the DNSBL answer', async () => {
    // it passed pregreet yesterday (cached a day), and was listed since: only DNSBL is due. Its first
    // bytes must not end the wait before the answer is in (they did: no answer yet read as clean)
    const store = await SqliteStore.open({ dataDir: chain.dataDir });
    await store.recordPass('127.0.5.77', 'pregreet', 24 * 3600_000).finally(() => store.close());
    const c = await connect('127.0.5.77');
    c.write('EHLO early.remote.test\r\n');
    expect((await c.read(3000)).lines).toEqual([
      '521 5.7.1 Service unavailable; client [127.0.5.77] blocked using zen.test',
    ]);
    expect(chain.service('screen').find((l) => /^PREGREET .*127\.0\.5\.77/.test(l.msg))).toBeUndefined();
  });
});
