import net from 'node:net';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { silentLogger } from '@moat/log';
import { createListener, type HopHandlers, type Listener } from './listener.js';
import { reply } from './replies.js';

let listener: Listener | undefined;
afterEach(async () => {
  await listener?.close();
  listener = undefined;
});

const ENGINES = ['lean', 'smtp-server'] as const;
let engine: (typeof ENGINES)[number] = 'lean';

async function start(
  handlers: Partial<HopHandlers> = {},
  extra: Record<string, unknown> = {},
): Promise<Listener> {
  listener = await createListener({
    engine,
    service: 'test',
    hostname: 'mx.example.test',
    listen: '127.0.0.1:0',
    peers: ['127.0.0.1/32'],
    messageSizeLimit: 1024 * 1024,
    closeTimeoutMs: 100,
    logger: silentLogger(),
    handlers: { data: async () => reply(250, '2.0.0', 'Ok'), ...handlers },
    ...extra,
  });
  return listener;
}

function talk(port: number, lines: string[], localAddress?: string): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ port, host: '127.0.0.1', localAddress });
    let buf = '';
    const replies: string[] = [];
    let i = 0;
    s.on('data', (d) => {
      buf += d.toString();
      let nl;
      while ((nl = buf.indexOf('\r\n')) !== -1) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 2);
        if (/^\d{3}-/.test(line)) continue;
        replies.push(line);
        if (i < lines.length) s.write(lines[i++] + '\r\n');
        else s.end();
      }
    });
    s.on('close', () => resolve(replies));
    s.on('error', reject);
  });
}

describe.each(ENGINES)('the hop listener (%s engine)', (name) => {
  beforeEach(() => {
    engine = name;
  });

  it('sends the banner at once: no fixed 100 ms early-talker wait, no reverse DNS', async () => {
    const l = await start();
    expect(l.engine).toBe(name);
    if (l.server) expect(l.server.options.disableReverseLookup).toBe(true);
    const started = Date.now();
    for (let i = 0; i < 20; i++) {
      const t = Date.now();
      await new Promise<void>((resolve, reject) => {
        const s = net.connect(l.address.port, '127.0.0.1');
        s.once('data', (d) => {
          expect(d.toString()).toMatch(/^220 mx\.example\.test ESMTP/);
          s.destroy();
          resolve();
        });
        s.once('error', reject);
      });
      expect(Date.now() - t).toBeLessThan(60);
    }
    // with smtp-server's wait this takes over 2 s
    expect(Date.now() - started).toBeLessThan(1000);
  });

  it('gives every reply an enhanced status code, and ours exactly once', async () => {
    const l = await start({
      rcptTo: (r) =>
        r.address.startsWith('no') ? reply(550, '5.1.1', `<${r.address}>: User unknown`) : undefined,
    });
    const replies = await talk(l.address.port, [
      'EHLO a.test',
      'MAIL FROM:<a@b.test>',
      'RCPT TO:<no@example.test>',
      'RCPT TO:<yes@example.test>',
      'QUIT',
    ]);
    expect(replies).toEqual([
      '220 mx.example.test ESMTP',
      '250 SIZE 1048576',
      '250 2.1.0 Accepted',
      '550 5.1.1 <no@example.test>: User unknown',
      '250 2.1.5 Accepted',
      '221 2.0.0 Bye',
    ]);
  });

  it('answers 451 4.3.0 when a handler throws, and keeps serving', async () => {
    const l = await start({
      mailFrom: () => {
        throw new Error('database hiccup');
      },
    });
    const replies = await talk(l.address.port, ['EHLO a.test', 'MAIL FROM:<a@b.test>', 'NOOP', 'QUIT']);
    expect(replies[2]).toBe('451 4.3.0 Error: internal error, please try again later');
    expect(replies[3]).toMatch(/^250 /);
  });

  it('calls reset once for a transaction that ends without DATA', async () => {
    const resets: string[] = [];
    const l = await start({ reset: (tx, _s, why) => resets.push(`${tx.mailFrom.address}:${why}`) });
    await talk(l.address.port, [
      'EHLO a.test',
      'MAIL FROM:<one@b.test>',
      'RSET',
      'MAIL FROM:<two@b.test>',
      'QUIT',
    ]);
    await new Promise((r) => setTimeout(r, 50));
    expect(resets).toEqual(['one@b.test:reset', 'two@b.test:disconnect']);
  });

  it('refuses a connection from outside its peers with 421 4.7.0', async () => {
    const l = await start();
    const replies = await talk(l.address.port, [], '127.0.0.3');
    expect(replies).toEqual(['421 4.7.0 Error: access denied for [127.0.0.3]: not an allowed peer']);
  });
});
