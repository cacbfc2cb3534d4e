import net from 'node:net';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { silentLogger } from '@moat/log';
import { ScriptedServer } from '@moat/testkit';
import { DotStuffer } from './dot-stuff.js';
import { RelayPool } from './pool.js';
import { ReplyParser } from './reply-parser.js';
import { RelayTransaction } from './transaction.js';
import { xforwardCommands } from './xforward.js';

const client = {
  address: '192.0.2.7',
  port: 4567,
  name: 'unknown',
  helo: 'mail.remote.test',
  proto: 'ESMTP',
  ident: 'ABC123',
};

describe('ReplyParser', () => {
  it('assembles multi-line and pipelined replies across chunks', () => {
    const p = new ReplyParser();
    expect(p.push(Buffer.from('250-first\r\n250 sec'))).toEqual([]);
    expect(p.push(Buffer.from('ond\r\n550 5.1.1 no\r\n'))).toEqual([
      { code: 250, lines: ['first', 'second'] },
      { code: 550, lines: ['5.1.1 no'] },
    ]);
    expect(() => p.push(Buffer.from('garbage\r\n'))).toThrow(/malformed/);
  });
});

describe('DotStuffer', () => {
  it('doubles line-initial dots across chunk boundaries', () => {
    const s = new DotStuffer();
    const out = Buffer.concat([
      s.stuff(Buffer.from('.a\r\n')),
      s.stuff(Buffer.from('.b\r\nc\r')),
      s.stuff(Buffer.from('\n.\r\n')),
    ]);
    expect(out.toString()).toBe('..a\r\n..b\r\nc\r\n..\r\n');
    expect(s.terminator().toString()).toBe('.\r\n');
    const t = new DotStuffer();
    t.stuff(Buffer.from('no newline at end'));
    expect(t.terminator().toString()).toBe('\r\n.\r\n');
  });
});

describe('xforwardCommands', () => {
  it('sends only announced attributes, xtext-encoded, [UNAVAILABLE] for unknowns', () => {
    const all = new Set(['NAME', 'ADDR', 'PORT', 'PROTO', 'HELO', 'IDENT']);
    expect(xforwardCommands({ ...client, helo: 'a+b=c' }, all)).toEqual([
      'XFORWARD NAME=[UNAVAILABLE] ADDR=192.0.2.7 PORT=4567 PROTO=ESMTP HELO=a+2Bb+3Dc IDENT=ABC123',
    ]);
    expect(xforwardCommands({ ...client, address: '2001:db8::1' }, new Set(['ADDR']))).toEqual([
      'XFORWARD ADDR=IPV6:2001:db8::1',
    ]);
    expect(xforwardCommands(client, new Set())).toEqual([]);
    const long = xforwardCommands({ ...client, name: 'n'.repeat(250), helo: 'h'.repeat(250) }, all);
    expect(long.length).toBe(2);
    for (const c of long) expect(c.length).toBeLessThanOrEqual(512);
  });
});

describe('RelayTransaction against a next hop', () => {
  let server: ScriptedServer;
  let pool: RelayPool;
  beforeAll(async () => {
    server = await ScriptedServer.start();
    pool = new RelayPool({
      name: 'next',
      targets: [`127.0.0.1:${server.port}`],
      ehloName: 'mx.example.test',
      connectTimeoutMs: 2000,
      timeoutMs: 2000,
      maxIdle: 4,
      logger: silentLogger(),
    });
  });
  afterAll(async () => {
    pool.close();
    await server.close();
  });

  it('writes a 100 KB body in a few large no-delay writes, the final dot in the same write as the last chunk', async () => {
    const noDelay = vi.spyOn(net.Socket.prototype, 'setNoDelay');
    const write = vi.spyOn(net.Socket.prototype, 'write');
    const line = 'x'.repeat(78) + '\r\n';
    const body = Buffer.from('Subject: big\r\n\r\n' + line.repeat(1280));
    const chunks = Array.from({ length: Math.ceil(body.length / 1024) }, (_, i) =>
      body.subarray(i * 1024, (i + 1) * 1024),
    );
    try {
      const r = await RelayTransaction.send(
        pool,
        client,
        {
          mailFrom: { address: 'a@remote.test', args: {} },
          rcptTo: [{ address: 'b@example.test', args: {} }],
        },
        () => Readable.from(chunks),
      );
      expect(r).toEqual({ code: 250, lines: ['2.0.0 Ok: queued as SCRIPTED'] });
      expect(noDelay).toHaveBeenCalledWith(true);
      const bodyWrites = write.mock.calls.map((c) => c[0]).filter((d) => Buffer.isBuffer(d)) as Buffer[];
      // 100 KB in writes of at least 16 KB: no line-by-line writing
      expect(bodyWrites.length).toBeLessThanOrEqual(8);
      expect(bodyWrites[bodyWrites.length - 1]!.subarray(-6).toString()).toBe('x\r\n.\r\n');
      // commands pipelined in one write
      const commandWrites = write.mock.calls
        .map((c) => c[0])
        .filter((d) => typeof d === 'string') as string[];
      expect(
        commandWrites.some((w) =>
          w.includes('MAIL FROM:<a@remote.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n'),
        ),
      ).toBe(true);
      expect(server.messages[server.messages.length - 1]).toBe(body.toString('latin1'));
    } finally {
      noDelay.mockRestore();
      write.mockRestore();
    }
  });

  it('reuses the pooled connection and replaces one the server closed', async () => {
    const env = {
      mailFrom: { address: 'a@remote.test', args: {} },
      rcptTo: [{ address: 'b@example.test', args: {} }],
    };
    const before = server.sessions.length;
    await RelayTransaction.send(pool, client, env, () => Readable.from([Buffer.from('a\r\n')]));
    await RelayTransaction.send(pool, client, env, () => Readable.from([Buffer.from('b\r\n')]));
    expect(server.sessions.length - before).toBeLessThanOrEqual(1);
  });

  it('answers with the server 5xx and aborts without the final dot when every recipient is refused', async () => {
    server.script = { replies: { rcpt: '550 5.1.1 <b@example.test>: User unknown' } };
    try {
      const r = await RelayTransaction.send(
        pool,
        client,
        {
          mailFrom: { address: 'a@remote.test', args: {} },
          rcptTo: [{ address: 'b@example.test', args: {} }],
        },
        () => Readable.from([Buffer.from('never sent\r\n')]),
      );
      expect(r).toEqual({ code: 550, lines: ['5.1.1 <b@example.test>: User unknown'] });
      expect(server.messages.some((m) => m.includes('never sent'))).toBe(false);
    } finally {
      server.script = {};
    }
  });
});
