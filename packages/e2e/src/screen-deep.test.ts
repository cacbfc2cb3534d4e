/**
 * screen's deep protocol tests on the live spliced session (a passing client goes on in the same
 * session, no reconnect), screen behind a load balancer (PROXY v1 and v2, IPv6 client listed by
 * rbldnsd), and two screen processes sharing one Redis reputation store.
 */
import fs from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startRbldnsd, startRedis, writeZone, type DaemonHandle, type RbldnsdHandle } from '@moat/daemons';
import { Chain, ScriptedServer, SmtpClient, swaks, tmpDir, waitFor, type LogLine } from '@moat/testkit';

let dns: RbldnsdHandle;
let redis: DaemonHandle;
let chain: Chain;
let other: Chain | undefined;
/** greylist's next hop: accepts every message (filter and delivery are not what is tested here). */
let next: ScriptedServer;

const DEEP = {
  greetWait: '300ms',
  accessList: [],
  pipeliningEnable: true,
  pipeliningAction: 'enforce',
  nonSmtpCommandEnable: true,
  nonSmtpCommandAction: 'drop',
  bareNewlineEnable: true,
  bareNewlineAction: 'ignore',
};

function screenLog(c: Chain, re: RegExp, timeoutMs = 5000): Promise<LogLine> {
  return c.service('screen').waitForLog((l) => re.test(l.msg), timeoutMs, String(re));
}

async function restartScreen(screen: Record<string, unknown>): Promise<void> {
  await chain.service('screen').stop();
  const config = { ...chain.config, screen: { ...(chain.config.screen as object), ...screen } };
  fs.writeFileSync(chain.configFile, YAML.stringify(config));
  await chain.start('screen');
}

/** Connects and reads the whole greeting (teaser + greylist's 220). */
async function greeted(ip: string, port = chain.ports.screen): Promise<SmtpClient> {
  const c = await SmtpClient.connect(port, { localAddress: ip });
  const banner = await c.read(3000);
  expect(banner.text).toMatch(/^220 mx\.example\.test ESMTP/);
  return c;
}

beforeAll(async () => {
  const stateDir = tmpDir('moat-screen-deep-');
  const dir = path.join(stateDir, 'rbldnsd');
  fs.mkdirSync(dir);
  writeZone(dir, 'zen4.zone', ['127.0.0.2 :127.0.0.2:test point']);
  writeZone(dir, 'zen6.zone', ['2001:db8::25 :127.0.0.4:v6 listed']);
  dns = await startRbldnsd({
    stateDir,
    dir,
    zones: [
      { name: 'zen.test', type: 'ip4set', file: 'zen4.zone' },
      { name: 'zen.test', type: 'ip6trie', file: 'zen6.zone' },
    ],
  });
  redis = await startRedis({ stateDir });
  next = await ScriptedServer.start();
  chain = await Chain.create({
    services: ['greylist', 'screen'],
    config: {
      store: redis.address,
      dns: { servers: [dns.address] },
      greylist: { next: [`127.0.0.1:${next.port}`] },
      screen: DEEP,
    },
  });
}, 60_000);

afterAll(async () => {
  await other?.stop();
  await chain?.stop();
  await redis?.stop();
  await dns?.stop();
  await next?.close();
});

describe('deep protocol tests on the spliced session', () => {
  it('a clean client passes at RCPT and its mail goes on to the next hop in the same session; next time PASS OLD', async () => {
    const r = await swaks([
      '--server',
      `127.0.0.1:${chain.ports.screen}`,
      '--local-interface',
      '127.0.20.1',
      '--ehlo',
      'clean.remote.test',
      '--from',
      'alice@remote.test',
      '--to',
      'carol@example.test',
    ]);
    expect(r.exitCode, r.output).toBe(0);
    expect(r.replies.some((l) => l.startsWith('250 2.0.0 Ok: queued as '))).toBe(true);
    await screenLog(chain, /^PASS NEW \[127\.0\.20\.1\]:\d+$/);
    expect(next.sessions.some((x) => x.messages.length === 1)).toBe(true);
    const c = await greeted('127.0.20.1');
    await c.quit();
    await screenLog(chain, /^PASS OLD \[127\.0\.20\.1\]:\d+$/);
  });

  it('pipelining before the EHLO reply (enforce): the engine takes over and rejects RCPT', async () => {
    const c = await greeted('127.0.20.2');
    c.write('EHLO pipe.remote.test\r\nMAIL FROM:<p@remote.test>\r\n');
    const ehlo = await c.read();
    expect(ehlo.lines[0]).toBe('250-mx.example.test');
    expect(ehlo.lines).not.toContain('250-PIPELINING');
    expect((await c.read()).text).toBe('250 2.1.0 Ok');
    expect((await c.cmd('RCPT TO:<bob@example.test>')).text).toBe('550 5.5.1 Protocol error');
    await c.quit();
    await screenLog(
      chain,
      /^COMMAND PIPELINING from \[127\.0\.20\.2\]:\d+ after EHLO: MAIL FROM:<p@remote\.test>\\r\\n$/,
    );
    await screenLog(
      chain,
      /^NOQUEUE: reject: RCPT from \[127\.0\.20\.2\]:\d+: 550 5\.5\.1 Protocol error; from=<p@remote\.test>, to=<bob@example\.test>, proto=ESMTP, helo=<pipe\.remote\.test>$/,
    );
  });

  it('MAIL, RCPT and DATA in one write after the EHLO reply is allowed (greylist offers PIPELINING)', async () => {
    const c = await greeted('127.0.20.3');
    expect((await c.cmd('EHLO ok.remote.test')).lines).toContain('250-PIPELINING');
    c.write('MAIL FROM:<ok@remote.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n');
    expect((await c.read()).code).toBe(250);
    expect((await c.read()).code).toBe(250);
    expect((await c.read()).code).toBe(354);
    c.write('Subject: pipelined\r\n\r\nhi\r\n.\r\n');
    expect((await c.read()).text).toMatch(/^250 2\.0\.0 Ok: queued as /);
    await c.quit();
    await screenLog(chain, /^PASS NEW \[127\.0\.20\.3\]:\d+$/);
  });

  it('a non-SMTP command (drop) gets 521 5.7.0 and is not forwarded', async () => {
    const c = await greeted('127.0.20.4');
    c.write('GET / HTTP/1.0\r\n');
    expect((await c.read()).text).toBe('521 5.7.0 Error: I can break rules, too. Goodbye.');
    await waitFor(() => c.closed || undefined, 3000, 'closed');
    await screenLog(
      chain,
      /^NON-SMTP COMMAND from \[127\.0\.20\.4\]:\d+ after CONNECT: GET \/ HTTP\/1\.0\\r\\n$/,
    );
  });

  it('a bare newline (ignore) is logged and the session goes on', async () => {
    const c = await greeted('127.0.20.5');
    c.write('EHLO bare.remote.test\n');
    const r = await c.read();
    expect(r.code).toBeGreaterThanOrEqual(200);
    await c.quit();
    await screenLog(chain, /^BARE NEWLINE from \[127\.0\.20\.5\]:\d+ after CONNECT$/);
  });
});

describe('two screen processes sharing Redis', () => {
  it("the second screen sees the first one's pass (PASS OLD at once)", async () => {
    const greylist = `127.0.0.1:${chain.ports.greylist}`;
    other = await Chain.create({
      services: ['screen'],
      config: {
        store: redis.address,
        dns: { servers: [dns.address] },
        screen: { ...DEEP, next: [greylist] },
      },
    });
    const first = await greeted('127.0.20.6');
    await first.quit();
    const cmds = await swaks([
      '--server',
      `127.0.0.1:${chain.ports.screen}`,
      '--local-interface',
      '127.0.20.7',
      '--from',
      'a@remote.test',
      '--to',
      'dave@example.test',
    ]);
    expect(cmds.exitCode, cmds.output).toBe(0);
    await screenLog(chain, /^PASS NEW \[127\.0\.20\.7\]:\d+$/);
    const t = Date.now();
    const c = await greeted('127.0.20.7', other.ports.screen);
    expect(Date.now() - t).toBeLessThan(250);
    await c.quit();
    await screenLog(other, /^PASS OLD \[127\.0\.20\.7\]:\d+$/);
  });
});

describe('behind a load balancer (upstreamProxyProtocol: haproxy)', () => {
  beforeAll(async () => {
    await restartScreen({
      upstreamProxyProtocol: 'haproxy',
      upstreamProxyPeers: ['127.0.21.0/24'],
      dnsblSites: ['zen.test'],
      dnsblAction: 'drop',
      pipeliningEnable: false,
      nonSmtpCommandEnable: false,
      bareNewlineEnable: false,
    });
  });

  it('PROXY v1 from a trusted peer: the named client is screened, logged and handed to greylist', async () => {
    const c = await SmtpClient.connect(chain.ports.screen, { localAddress: '127.0.21.1' });
    c.write('PROXY TCP4 198.51.100.7 192.0.2.25 40001 25\r\n');
    expect((await c.read(3000)).text).toMatch(/^220 mx\.example\.test ESMTP/);
    await c.cmd('EHLO lb.remote.test');
    await c.cmd('MAIL FROM:<a@remote.test>');
    // a relay attempt: greylist logs the rejection with the client it was told about
    expect((await c.cmd('RCPT TO:<x@elsewhere.test>')).code).toBe(554);
    await c.quit();
    await screenLog(chain, /^CONNECT from \[198\.51\.100\.7\]:40001 to \[192\.0\.2\.25\]:25$/);
    await screenLog(chain, /^PASS NEW \[198\.51\.100\.7\]:40001$/);
    await chain
      .service('greylist')
      .waitForLog((l) => l.client === '198.51.100.7', 5000, 'greylist sees the client');
  });

  it('PROXY v2 naming a listed IPv6 client: 521 naming [2001:db8::25]', async () => {
    const c = await SmtpClient.connect(chain.ports.screen, { localAddress: '127.0.21.2' });
    const header = Buffer.alloc(16 + 36);
    Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]).copy(header);
    header[12] = 0x21; // v2, PROXY
    header[13] = 0x21; // TCP over IPv6
    header.writeUInt16BE(36, 14);
    Buffer.from('20010db8000000000000000000000025', 'hex').copy(header, 16);
    Buffer.from('20010db8000000000000000000000001', 'hex').copy(header, 32);
    header.writeUInt16BE(40002, 48);
    header.writeUInt16BE(25, 50);
    c.write(header);
    const r = await c.read(3000);
    expect(r.text).toBe('521 5.7.1 Service unavailable; client [2001:db8::25] blocked using zen.test');
    await screenLog(chain, /^DNSBL rank 1 for \[2001:db8::25\]:40002$/);
  });

  it('a peer outside upstreamProxyPeers is screened by its own address', async () => {
    const c = await SmtpClient.connect(chain.ports.screen, { localAddress: '127.0.22.1' });
    const r = await c.read(3000);
    expect(r.text).toMatch(/^220 mx\.example\.test ESMTP/);
    await c.quit();
    await screenLog(chain, /^CONNECT from \[127\.0\.22\.1\]:\d+ to/);
  });
});
