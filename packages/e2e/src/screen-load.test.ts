/**
 * screen's connection limits with postscreen's replies, and a flood: 500 idle connections from one
 * /24 plus clients trickling a byte at a time do not keep a normal client from being served.
 */
import fs from 'node:fs';
import net from 'node:net';
import YAML from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Chain, message, ScriptedServer, SmtpClient, waitFor, type LogLine } from '@moat/testkit';

let chain: Chain;
let next: ScriptedServer;

function screenLog(re: RegExp, timeoutMs = 5000): Promise<LogLine> {
  return chain.service('screen').waitForLog((l) => re.test(l.msg), timeoutMs, String(re));
}

async function restartScreen(screen: Record<string, unknown>): Promise<void> {
  await chain.service('screen').stop();
  const config = { ...chain.config, screen: { ...(chain.config.screen as object), ...screen } };
  fs.writeFileSync(chain.configFile, YAML.stringify(config));
  await chain.start('screen');
}

/** A raw connection that only collects what it is sent. */
function raw(ip: string): Promise<{ socket: net.Socket; text: () => string }> {
  return new Promise((resolve, reject) => {
    let got = '';
    const socket = net.connect({ host: '127.0.0.1', port: chain.ports.screen, localAddress: ip });
    socket.on('data', (d: Buffer) => (got += d.toString('latin1')));
    socket.on('error', () => undefined);
    socket.once('connect', () => resolve({ socket, text: () => got }));
    socket.once('error', reject);
  });
}

beforeAll(async () => {
  next = await ScriptedServer.start();
  chain = await Chain.create({
    services: ['greylist', 'screen'],
    config: {
      greylist: { next: [`127.0.0.1:${next.port}`] },
      screen: { accessList: [], greetWait: '2s', clientConnectionCountLimit: 3, preQueueLimit: 5 },
    },
  });
}, 60_000);

afterAll(async () => {
  await chain?.stop();
  await next?.close();
});

describe('connection limits', () => {
  it('too many from one client: 421 4.7.0; all screening slots in use: 421 4.3.2', async () => {
    const held = await Promise.all(['127.0.40.1', '127.0.40.1', '127.0.40.1'].map(raw));
    const fourth = await SmtpClient.connect(chain.ports.screen, { localAddress: '127.0.40.1' });
    expect((await fourth.read()).text).toBe('421 4.7.0 Error: too many connections');
    await screenLog(/^NOQUEUE: reject: CONNECT from \[127\.0\.40\.1\]:\d+: too many connections$/);
    held.push(...(await Promise.all(['127.0.40.2', '127.0.40.3'].map(raw))));
    const sixth = await SmtpClient.connect(chain.ports.screen, { localAddress: '127.0.40.4' });
    expect((await sixth.read()).text).toBe('421 4.3.2 All screening ports are busy');
    await screenLog(/^NOQUEUE: reject: CONNECT from \[127\.0\.40\.4\]:\d+: all screening ports busy$/);
    for (const h of held) h.socket.destroy();
  });
});

describe('a flood from one /24 and slow tricklers', () => {
  beforeAll(async () => {
    await restartScreen({ greetWait: '1s', clientConnectionCountLimit: 50, preQueueLimit: 2000 });
  });

  it('500 idle connections and 20 tricklers leave a normal client served within 2 s', async () => {
    const idle: net.Socket[] = [];
    for (let i = 0; i < 500; i++) idle.push((await raw(`127.0.50.${(i % 250) + 1}`)).socket);
    const tricklers = await Promise.all(Array.from({ length: 20 }, (_, i) => raw(`127.0.51.${i + 1}`)));
    const drip = setInterval(() => {
      for (const t of tricklers) if (!t.socket.destroyed) t.socket.write('N');
    }, 100);
    try {
      const started = Date.now();
      const c = await SmtpClient.connect(chain.ports.screen, { localAddress: '127.0.52.1' });
      expect((await c.read(3000)).text).toMatch(/^220 mx\.example\.test ESMTP/);
      await c.cmd('EHLO normal.remote.test');
      const r = await c.send('normal@remote.test', ['bob@example.test'], message());
      expect(r.final?.text).toMatch(/^250 2\.0\.0 Ok: queued as /);
      const ms = Date.now() - started;
      expect(ms).toBeLessThan(2000);
      await c.quit();
      // the flood was screened too: every idle client passed and was spliced
      await waitFor(
        () =>
          chain.service('screen').logs.filter((l) => /^PASS NEW \[127\.0\.50\./.test(l.msg)).length >= 250 ||
          undefined,
        10_000,
        'the idle clients passed',
      );
      await screenLog(/^PREGREET 1 after \d+\.\d\d from \[127\.0\.51\.\d+\]:\d+: N$/);
    } finally {
      clearInterval(drip);
      for (const s of idle) s.destroy();
      for (const t of tricklers) t.socket.destroy();
    }
  });
});
