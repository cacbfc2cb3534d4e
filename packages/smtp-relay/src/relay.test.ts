import net from 'node:net';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { silentLogger } from '@moat/log';
import { createListener, type Listener, reply } from '@moat/smtp-listener';
import { ScriptedServer, waitFor } from '@moat/testkit';
import { DotStuffer } from './dot-stuff.js';
import { RelayPool } from './pool.js';
import { ReplyParser } from './reply-parser.js';
import { RelayTransaction } from './transaction.js';
import { xforwardCommands } from './xforward.js';

const poolTo = (name: string, ...ports: number[]) =>
  new RelayPool({
    name,
    targets: ports.map((port) => `127.0.0.1:${port}`),
    ehloName: 'mx.example.test',
    connectTimeoutMs: 2000,
    timeoutMs: 2000,
    maxIdle: 4,
    logger: silentLogger(),
  });

const envelope = (...rcpt: string[]) => ({
  mailFrom: { address: 'a@remote.test', args: {} },
  rcptTo: rcpt.map((address) => ({ address, args: {} })),
});

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
    pool = poolTo('next', server.port);
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
    const env = envelope('b@example.test');
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

  it('answers a 4xx when every recipient is refused but one only for now, so none is bounced', async () => {
    server.script = {
      rcptReplies: {
        'b@example.test': '550 5.1.1 <b@example.test>: User unknown',
        'c@example.test': '450 4.2.0 <c@example.test>: Mailbox busy',
      },
    };
    try {
      const r = await RelayTransaction.send(
        pool,
        client,
        {
          mailFrom: { address: 'a@remote.test', args: {} },
          rcptTo: [
            { address: 'b@example.test', args: {} },
            { address: 'c@example.test', args: {} },
          ],
        },
        () => Readable.from([Buffer.from('never sent\r\n')]),
      );
      expect(r).toEqual({ code: 450, lines: ['4.2.0 <c@example.test>: Mailbox busy'] });
      expect(server.messages.some((m) => m.includes('never sent'))).toBe(false);
    } finally {
      server.script = {};
    }
  });

  it('sends on a fresh connection when the one reserved at MAIL died before DATA', async () => {
    // greylist reserves a connection at its client's MAIL; a slow client can outlast it (the next hop
    // restarted, or its idle timeout closed it). Nothing was sent on it: a new one must be used
    const reservation = await RelayTransaction.reserve(pool);
    expect(reservation.reused).toBe(false);
    const before = server.sessions.length;
    server.dropConnections(); // the next hop closes it
    await waitFor(
      () => reservation.conn.dead || undefined,
      2000,
      'the reserved connection to be seen closed',
    );
    const r = await RelayTransaction.send(
      pool,
      client,
      envelope('b@example.test'),
      () => Readable.from([Buffer.from('late\r\n')]),
      undefined,
      reservation,
    );
    expect(r).toEqual({ code: 250, lines: ['2.0.0 Ok: queued as SCRIPTED'] });
    expect(server.sessions.length - before).toBe(1);
    expect(server.messages.at(-1)).toBe('late\r\n');
  });
});

describe('RelayTransaction with CHUNKING (BDAT, RFC 3030) against our lean listener', () => {
  let listener: Listener;
  let pool: RelayPool;
  const bodies: Buffer[] = [];
  const failures: Error[] = [];
  let connects = 0;
  const env = envelope;
  beforeAll(async () => {
    listener = await createListener({
      engine: 'lean',
      service: 'next',
      hostname: 'next.example.test',
      listen: '127.0.0.1:0',
      peers: ['127.0.0.1/32'],
      xforward: true,
      messageSizeLimit: 10 * 1024 * 1024,
      logger: silentLogger(),
      handlers: {
        connect() {
          connects++;
          return Promise.resolve(undefined);
        },
        rcptTo(rcpt) {
          return Promise.resolve(
            rcpt.address.startsWith('unknown')
              ? reply(550, '5.1.1', `<${rcpt.address}>: Recipient address rejected`)
              : undefined,
          );
        },
        async data(body, tx) {
          const parts: Buffer[] = [];
          try {
            for await (const c of body) parts.push(c as Buffer);
          } catch (err) {
            failures.push(err as Error);
            throw err;
          }
          bodies.push(Buffer.concat(parts));
          return reply(250, '2.0.0', `Ok: queued as ${tx.id}`);
        },
      },
    });
    pool = poolTo('next', listener.address.port);
  });
  afterAll(async () => {
    pool.close();
    await listener.close();
  });

  it('sends a one-recipient message as envelope + BDAT LAST + body in one write, exactly as given', async () => {
    const write = vi.spyOn(net.Socket.prototype, 'write');
    try {
      const r = await RelayTransaction.send(
        pool,
        client,
        env('b@example.test'),
        () => Readable.from([Buffer.from('Subject: x\r\n\r\n'), Buffer.from('.dot\r\nno line ending')]),
        Buffer.from('Received: from test\r\n'),
      );
      expect(r.code).toBe(250);
      expect(r.lines[0]).toMatch(/^2\.0\.0 Ok: queued as /);
      const msg = 'Received: from test\r\nSubject: x\r\n\r\n.dot\r\nno line ending\r\n';
      // no dot-stuffing, the CRLF DATA's end would give, and one write for the whole transaction
      expect(bodies.at(-1)!.toString()).toBe(msg);
      const writes = write.mock.calls.map((c) => c[0]).filter((d) => Buffer.isBuffer(d)) as Buffer[];
      const tx = writes.filter((w) => w.includes('MAIL FROM:<a@remote.test>'));
      expect(tx).toHaveLength(1);
      expect(tx[0]!.toString()).toMatch(
        new RegExp(`RCPT TO:<b@example\\.test>\\r\\nBDAT ${msg.length} LAST\\r\\n[^]*no line ending\\r\\n$`),
      );
    } finally {
      write.mockRestore();
    }
  });

  it('sends a large body in 64 KB chunks, intact, and reuses the connection', async () => {
    const before = connects;
    const line = 'y'.repeat(98) + '\r\n';
    const body = Buffer.from(line.repeat(3000)); // 300 KB
    const pieces = Array.from({ length: 300 }, (_, i) => body.subarray(i * 1000, (i + 1) * 1000));
    const r = await RelayTransaction.send(pool, client, env('b@example.test'), () => Readable.from(pieces));
    expect(r.code).toBe(250);
    expect(bodies.at(-1)!.equals(body)).toBe(true);
    const r2 = await RelayTransaction.send(pool, client, env('c@example.test', 'd@example.test'), () =>
      Readable.from([Buffer.from('two recipients\r\n')]),
    );
    expect(r2.code).toBe(250);
    expect(bodies.at(-1)!.toString()).toBe('two recipients\r\n');
    expect(connects - before).toBeLessThanOrEqual(1);
  });

  it('gives the refusal when every recipient is refused, and the next hop gets nothing', async () => {
    const n = bodies.length;
    const r = await RelayTransaction.send(pool, client, env('unknown@example.test'), () =>
      Readable.from([Buffer.from('never delivered\r\n')]),
    );
    expect(r).toEqual({ code: 550, lines: ['5.1.1 <unknown@example.test>: Recipient address rejected'] });
    expect(bodies.length).toBe(n);
  });

  it('with some recipients refused, answers 451 4.3.0 and never sends the last chunk', async () => {
    const n = bodies.length;
    const f = failures.length;
    const r = await RelayTransaction.send(pool, client, env('b@example.test', 'unknown@example.test'), () =>
      Readable.from([Buffer.from('for b only would be wrong\r\n')]),
    );
    expect(r).toEqual({
      code: 451,
      lines: ['4.3.0 Error: next hop refused some recipients, try again later'],
    });
    await new Promise((res) => setTimeout(res, 50));
    expect(bodies.length).toBe(n);
    // the next hop saw the transaction end without its last chunk
    expect(failures.length).toBe(f + 1);
  });

  it('aborts without a last chunk when our own body fails after the first chunk', async () => {
    const n = bodies.length;
    const f = failures.length;
    async function* failing(): AsyncGenerator<Buffer> {
      yield Buffer.alloc(70 * 1024, 0x61);
      await new Promise((res) => setTimeout(res, 20));
      throw new Error('client went away');
    }
    await expect(RelayTransaction.send(pool, client, env('b@example.test'), failing)).rejects.toThrow(
      'client went away',
    );
    await new Promise((res) => setTimeout(res, 50));
    expect(bodies.length).toBe(n);
    expect(failures.length).toBe(f + 1);
  });
});

describe('RelayTransaction with CHUNKING when a later chunk is refused', () => {
  it('sends no last chunk after a refused one, and answers with the refusal', async () => {
    // a next hop that takes the first chunk and then refuses the message (as a hop whose disk filled up)
    const refuser = await createListener({
      engine: 'lean',
      service: 'refuser',
      hostname: 'next.test',
      listen: '127.0.0.1:0',
      peers: ['127.0.0.1/32'],
      xforward: true,
      messageSizeLimit: 10 * 1024 * 1024,
      logger: silentLogger(),
      handlers: {
        async data(body) {
          let bytes = 0;
          for await (const c of body) if ((bytes += (c as Buffer).length) > 70_000) break; // into chunk 2
          return reply(554, '5.6.0', 'Error: chunk refused');
        },
      },
    });
    const pool = poolTo('refuser', refuser.address.port);
    const write = vi.spyOn(net.Socket.prototype, 'write');
    try {
      const line = 'y'.repeat(98) + '\r\n';
      const body = Buffer.from(line.repeat(3000)); // 300 KB: five chunks
      const pieces = Array.from({ length: 300 }, (_, i) => body.subarray(i * 1000, (i + 1) * 1000));
      const r = await RelayTransaction.send(pool, client, envelope('b@example.test'), () =>
        Readable.from(pieces),
      );
      expect(r).toEqual({ code: 554, lines: ['5.6.0 Error: chunk refused'] });
      const commands = write.mock.calls.flatMap((c) => String(c[0]).match(/BDAT \d+( LAST)?\r\n/g) ?? []);
      // the first chunk, then at least the one that was refused; never the last
      expect(commands.length).toBeGreaterThanOrEqual(2);
      expect(commands.filter((c) => c.includes('LAST'))).toEqual([]);
    } finally {
      write.mockRestore();
      pool.close();
      await refuser.close();
    }
  });
});

describe('RelayTransaction with CHUNKING on a pooled connection that is gone', () => {
  it('sends the transaction again on a fresh connection, body intact', async () => {
    // a next hop whose first connection dies on its second transaction, unanswered
    const received: string[] = [];
    let conns = 0;
    const server = net.createServer((s) => {
      const n = ++conns;
      let txs = 0;
      let buf = Buffer.alloc(0);
      s.write('220 raw.test ESMTP\r\n');
      s.on('error', () => undefined);
      s.on('data', (d: Buffer) => {
        buf = Buffer.concat([buf, d]);
        for (;;) {
          const text = buf.toString('latin1');
          if (text.startsWith('EHLO')) {
            s.write('250-raw.test\r\n250-PIPELINING\r\n250 CHUNKING\r\n');
            buf = buf.subarray(text.indexOf('\r\n') + 2);
            continue;
          }
          const m = /BDAT (\d+) LAST\r\n/.exec(text);
          if (!m) return;
          const start = m.index + m[0].length;
          if (buf.length < start + Number(m[1])) return;
          if (n === 1 && ++txs === 2) {
            s.destroy();
            return;
          }
          const commands = text.slice(0, m.index).split('\r\n').filter(Boolean).length;
          received.push(buf.subarray(start, start + Number(m[1])).toString());
          s.write('250 ok\r\n'.repeat(commands) + '250 2.0.0 Ok: queued\r\n');
          buf = buf.subarray(start + Number(m[1]));
        }
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const pool = poolTo('raw', (server.address() as net.AddressInfo).port);
    const env = envelope('b@example.test');
    try {
      const one = await RelayTransaction.send(pool, client, env, () =>
        Readable.from([Buffer.from('one\r\n')]),
      );
      expect(one.code).toBe(250);
      // the body is a stream: it can be read only once, so the retry must use what was read
      const stream = Readable.from([Buffer.from('two\r\n')]);
      const two = await RelayTransaction.send(pool, client, env, () => stream);
      expect(two).toEqual({ code: 250, lines: ['2.0.0 Ok: queued'] });
      expect(received).toEqual(['one\r\n', 'two\r\n']);
      expect(conns).toBe(2);
    } finally {
      pool.close();
      server.close();
    }
  });

  it('sends it again over DATA, whole, when the fresh connection goes to a next hop without CHUNKING', async () => {
    // first target: a next hop with CHUNKING that drops its connection at the second transaction;
    // second target (the retry): ScriptedServer, which offers no CHUNKING
    let txs = 0;
    const raw = net.createServer((s) => {
      s.write('220 raw.test ESMTP\r\n');
      s.on('error', () => undefined);
      s.on('data', (d: Buffer) => {
        const text = d.toString('latin1');
        if (text.startsWith('EHLO')) s.write('250-raw.test\r\n250-PIPELINING\r\n250 CHUNKING\r\n');
        else if (/BDAT \d+ LAST/.test(text)) {
          if (++txs === 2) s.destroy();
          else {
            const commands = text.slice(0, text.indexOf('BDAT')).split('\r\n').filter(Boolean).length;
            s.write('250 ok\r\n'.repeat(commands) + '250 2.0.0 Ok: queued\r\n');
          }
        }
      });
    });
    await new Promise<void>((r) => raw.listen(0, '127.0.0.1', r));
    const scripted = await ScriptedServer.start();
    const pool = poolTo('mixed', (raw.address() as net.AddressInfo).port, scripted.port);
    const env = envelope('b@example.test');
    try {
      const one = await RelayTransaction.send(pool, client, env, () =>
        Readable.from([Buffer.from('one\r\n')]),
      );
      expect(one.code).toBe(250);
      // one stream, as greylist passes its client's: it can be read only once
      const stream = Readable.from([Buffer.from('Subject: two\r\n\r\n'), Buffer.from('.dotted\r\n')]);
      const two = await RelayTransaction.send(
        pool,
        client,
        env,
        () => stream,
        Buffer.from('Received: by test\r\n'),
      );
      expect(two).toEqual({ code: 250, lines: ['2.0.0 Ok: queued as SCRIPTED'] });
      expect(txs).toBe(2); // the second went to the first hop first, on the pooled connection
      // the prefix once and the whole body, as DATA sends it (ScriptedServer keeps the wire bytes: dot-stuffed)
      expect(scripted.messages.at(-1)).toBe('Received: by test\r\nSubject: two\r\n\r\n..dotted\r\n');
    } finally {
      pool.close();
      raw.close();
      await scripted.close();
    }
  });
});

describe('RelayTransaction: the client ESMTP parameters it passes on', () => {
  it('passes values as xtext and leaves out invalid keywords, so no client value adds a parameter', async () => {
    const seen: { mail: Record<string, unknown>; rcpt: Record<string, unknown> }[] = [];
    const next = await createListener({
      engine: 'lean',
      service: 'next',
      hostname: 'next.example.test',
      listen: '127.0.0.1:0',
      peers: ['127.0.0.1/32'],
      xforward: true,
      messageSizeLimit: 1024 * 1024,
      logger: silentLogger(),
      handlers: {
        async data(body, tx) {
          for await (const _ of body) void _;
          seen.push({
            mail: { ...(tx.mailFrom.args || {}) },
            rcpt: { ...(tx.rcptTo[0]!.args || {}) },
          });
          return reply(250, '2.0.0', `Ok: queued as ${tx.id}`);
        },
      },
    });
    const pool = poolTo('next', next.address.port);
    try {
      // as smtp-server hands them over: xtext already decoded ("ENVID=x+20SIZE+3D999999999" on the wire)
      const r = await RelayTransaction.send(
        pool,
        client,
        {
          mailFrom: { address: 'a@remote.test', args: { ENVID: 'x SIZE=999999999', RET: 'FULL SMTPUTF8' } },
          rcptTo: [
            { address: 'b@example.test', args: { NOTIFY: 'NEVER SIZE=1', ORCPT: 'rfc822;a+b c@x.test' } },
          ],
        } as never,
        () => Readable.from([Buffer.from('Subject: s\r\n\r\nbody\r\n')]),
      );
      expect(r.code).toBe(250);
      // the next hop (which decodes, as smtp-server does) gets each value whole, and nothing more
      expect(seen[0]!.mail).toEqual({ ENVID: 'x SIZE=999999999' });
      expect(seen[0]!.rcpt).toEqual({ ORCPT: 'rfc822;a+b c@x.test' });
      // one-to-one: a decoded value that looks like an escape is data, not a CR LF at the next hop
      const again = await RelayTransaction.send(
        pool,
        client,
        {
          mailFrom: { address: 'a@remote.test', args: { ENVID: 'ab+0D+0Acd' } },
          rcptTo: [{ address: 'b@example.test', args: { ORCPT: 'rfc822;user+2024@example.com' } }],
        } as never,
        () => Readable.from([Buffer.from('Subject: s\r\n\r\nbody\r\n')]),
      );
      expect(again.code).toBe(250);
      expect(seen[1]!.mail).toEqual({ ENVID: 'ab+0D+0Acd' });
      expect(seen[1]!.rcpt).toEqual({ ORCPT: 'rfc822;user+2024@example.com' });
    } finally {
      pool.close();
      await next.close();
    }
  });
});
