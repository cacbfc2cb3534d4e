import crypto from 'node:crypto';
import net from 'node:net';
import type { Readable } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { silentLogger } from '@moat/log';
import { parsePath } from './lean.js';
import { MessageTooBig } from './line-endings.js';
import { createListener, type HopHandlers, type Listener, type Transaction } from './listener.js';
import { reply } from './replies.js';

let listener: Listener | undefined;
afterEach(async () => {
  await listener?.close();
  listener = undefined;
});

async function read(body: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of body) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

interface Got {
  bodies: Buffer[];
  txs: Transaction[];
}

async function start(
  handlers: Partial<HopHandlers> = {},
  extra: Record<string, unknown> = {},
): Promise<{ port: number; got: Got }> {
  const got: Got = { bodies: [], txs: [] };
  listener = await createListener({
    engine: 'lean',
    service: 'test',
    hostname: 'mx.example.test',
    listen: '127.0.0.1:0',
    peers: ['127.0.0.1/32'],
    xforward: true,
    messageSizeLimit: 1024 * 1024,
    recipientLimit: 3,
    closeTimeoutMs: 500,
    logger: silentLogger(),
    handlers: {
      async data(body, tx) {
        got.bodies.push(await read(body));
        got.txs.push(tx);
        return reply(250, '2.0.0', `Ok: queued as ${tx.id}`);
      },
      ...handlers,
    },
    ...extra,
  });
  return { port: listener.address.port, got };
}

/** A raw client: writes what it is given, collects complete reply lines and the raw reads. */
class Client {
  readonly socket: net.Socket;
  readonly lines: string[] = [];
  readonly reads: string[] = [];
  #buf = '';
  #waiters: (() => void)[] = [];
  closed = false;

  constructor(port: number) {
    this.socket = net.connect({ port, host: '127.0.0.1' });
    this.socket.setNoDelay(true);
    this.socket.on('data', (d) => {
      this.reads.push(d.toString());
      this.#buf += d.toString();
      let nl;
      while ((nl = this.#buf.indexOf('\r\n')) !== -1) {
        this.lines.push(this.#buf.slice(0, nl));
        this.#buf = this.#buf.slice(nl + 2);
      }
      for (const w of this.#waiters.splice(0)) w();
    });
    this.socket.on('error', () => undefined);
    this.socket.on('close', () => {
      this.closed = true;
      for (const w of this.#waiters.splice(0)) w();
    });
  }

  write(s: string | Buffer): void {
    this.socket.write(s);
  }

  /** Waits until `n` final reply lines (not "250-" continuations) have arrived in all. */
  async replies(n: number): Promise<string[]> {
    const finals = () => this.lines.filter((l) => !/^\d{3}-/.test(l));
    while (finals().length < n && !this.closed) {
      await new Promise<void>((r) => this.#waiters.push(r));
    }
    return finals();
  }

  async ended(): Promise<void> {
    while (!this.closed) await new Promise<void>((r) => this.#waiters.push(r));
  }
}

const tick = () => new Promise((r) => setTimeout(r, 15));

describe('the lean listener (internal hops)', () => {
  it('answers a pipelined envelope in one write, and takes the message', async () => {
    const { port, got } = await start();
    const c = new Client(port);
    await c.replies(1);
    c.write('EHLO hop.test\r\n');
    await c.replies(2);
    const before = c.reads.length;
    c.write(
      'XFORWARD NAME=mail.remote.test ADDR=192.0.2.7 PORT=4242 PROTO=ESMTP HELO=Remote.Test IDENT=0MH2K1XQ7A3F\r\n' +
        'MAIL FROM:<a@remote.test> BODY=8BITMIME SIZE=100\r\nRCPT TO:<b@example.test>\r\nDATA\r\n',
    );
    const r = await c.replies(6);
    expect(r.slice(2)).toEqual([
      '250 2.0.0 OK',
      '250 2.1.0 Accepted',
      '250 2.1.5 Accepted',
      '354 End data with <CR><LF>.<CR><LF>',
    ]);
    // one write for the four replies: each write is a system call and a wake-up of the peer
    expect(c.reads.length - before).toBe(1);
    c.write('Subject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n');
    const all = await c.replies(8);
    expect(all[6]).toMatch(/^250 2\.0\.0 Ok: queued as \w{12}$/);
    expect(all[7]).toBe('221 2.0.0 Bye');
    await c.ended();
    expect(got.bodies[0]!.toString()).toBe('Subject: hi\r\n\r\nbody\r\n');
    const tx = got.txs[0]!;
    expect(tx.client).toEqual({
      address: '192.0.2.7',
      port: 4242,
      name: 'mail.remote.test',
      helo: 'remote.test',
      proto: 'ESMTP',
      ident: '0MH2K1XQ7A3F',
    });
    expect(tx.mailFrom).toEqual({ address: 'a@remote.test', args: { BODY: '8BITMIME', SIZE: '100' } });
    expect(tx.rcptTo).toEqual([{ address: 'b@example.test', args: false }]);
  });

  it('ends DATA only on CRLF.CRLF, split anywhere, and unstuffs dots', async () => {
    const { port, got } = await start();
    const c = new Client(port);
    c.write('EHLO hop.test\r\nMAIL FROM:<>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n');
    await c.replies(5);
    // "\n.\n" and ".\r\n" after a bare LF are inside the message; ".." is an unstuffed dot
    const pieces = ['A\r\n..dot\r\n', 'x\n.\nstill\r', '\n.', '\r', '\nNOOP\r\n'];
    for (const p of pieces) {
      c.write(p);
      await tick();
    }
    // "\r\n.\r\n" after "still" ended it, though it came in three reads; NOOP was a command again
    const r = await c.replies(7);
    expect(r.slice(5)).toEqual([expect.stringMatching(/^250 2\.0\.0 Ok: queued as /), '250 2.0.0 OK']);
    // bare LFs became CRLF (the one line-ending rule), the smuggled "." lines stayed inside
    expect(got.bodies[0]!.toString()).toBe('A\r\n.dot\r\nx\r\n\r\nstill\r\n');
    c.socket.destroy();
  });

  it('counts ".\\r\\n" right after the 354 as an empty message', async () => {
    const { port, got } = await start();
    const c = new Client(port);
    c.write('EHLO hop.test\r\nMAIL FROM:<>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n');
    await c.replies(5);
    c.write('.\r\n');
    expect((await c.replies(6))[5]).toMatch(/^250 /);
    expect(got.bodies[0]!.length).toBe(0);
    c.socket.destroy();
  });

  it('stops a message past the size limit with 552 5.3.4 and keeps the session', async () => {
    let failure: unknown;
    const { port } = await start(
      {
        async data(body) {
          try {
            await read(body);
          } catch (err) {
            failure = err;
          }
          return reply(250, '2.0.0', 'Ok');
        },
      },
      { messageSizeLimit: 1000 },
    );
    const c = new Client(port);
    c.write('EHLO hop.test\r\nMAIL FROM:<a@b.test> SIZE=5000\r\n');
    expect((await c.replies(3))[2]).toBe('552 5.3.4 Error: message exceeds fixed maximum message size 1000');
    c.write('MAIL FROM:<a@b.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n');
    await c.replies(6);
    c.write(`${'x'.repeat(70)}\r\n`.repeat(50) + '.\r\nNOOP\r\n');
    const r = await c.replies(8);
    expect(r[6]).toBe('552 5.3.4 Message size exceeds fixed limit');
    expect(r[7]).toBe('250 2.0.0 OK');
    expect(failure).toBeInstanceOf(MessageTooBig);
    c.socket.destroy();
  });

  it('carries a large message intact to a slow reader (backpressure)', async () => {
    const { port, got } = await start(
      {
        async data(body, tx) {
          const parts: Buffer[] = [];
          for await (const chunk of body) {
            parts.push(chunk as Buffer);
            if (parts.length % 8 === 0) await new Promise((r) => setTimeout(r, 2));
          }
          got.bodies.push(Buffer.concat(parts));
          return reply(250, '2.0.0', `Ok: queued as ${tx.id}`);
        },
      },
      { messageSizeLimit: 20 * 1024 * 1024 },
    );
    const line = (i: number) => `${i.toString().padStart(8, '0')} ${'y'.repeat(68)}\r\n`;
    let body = '';
    for (let i = 0; i < 60_000; i++) body += (i % 1000 === 0 ? '.' : '') + line(i);
    const c = new Client(port);
    c.write('EHLO hop.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n');
    await c.replies(5);
    c.write(body.replace(/^\./gm, '..') + '.\r\n');
    expect((await c.replies(6))[5]).toMatch(/^250 /);
    const want = crypto.createHash('sha256').update(body).digest('hex');
    expect(crypto.createHash('sha256').update(got.bodies[0]!).digest('hex')).toBe(want);
    c.socket.destroy();
  });

  it.each([['DATA'], ['BDAT']])(
    'answers a handler that gives up before a large body ends (%s), once the client has sent it all',
    async (how) => {
      // as delivery's streaming write does when the disk fails: it stops reading and answers 451
      const { port, got } = await start(
        {
          async data(body, tx) {
            for await (const chunk of body) {
              got.bodies.push(chunk as Buffer);
              break; // leaves the stream: nothing reads the rest
            }
            await new Promise((r) => setTimeout(r, 100)); // the socket is paused by now: the body is full
            return reply(451, '4.3.0', `Error: queue file write error (${tx.id})`);
          },
        },
        { messageSizeLimit: 20 * 1024 * 1024 },
      );
      const body = `Subject: big\r\n\r\n${`${'z'.repeat(998)}\r\n`.repeat(4000)}`; // 4 MB, far past any buffer
      const c = new Client(port);
      c.write('EHLO hop.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<b@example.test>\r\n');
      if (how === 'DATA') {
        c.write('DATA\r\n');
        await c.replies(5);
        c.write(`${body}.\r\n`);
      } else {
        c.write(`BDAT ${body.length} LAST\r\n${body}`);
      }
      const replies = await Promise.race([
        c.replies(how === 'DATA' ? 6 : 5),
        new Promise<string[]>((r) => setTimeout(() => r(['no answer in 3 s']), 3000)),
      ]);
      expect(replies.at(-1)).toMatch(/^451 4\.3\.0 Error: queue file write error/);
      // and the session goes on: the rest of the body was read as body, not as commands
      c.write('NOOP\r\n');
      expect((await c.replies(replies.length + 1)).at(-1)).toBe('250 2.0.0 OK');
      c.socket.destroy();
    },
  );

  it.each([
    ['mid-DATA', 'DATA\r\n', 'Subject: half\r\n\r\nhalf a mess', 5],
    ['in the middle of a BDAT chunk', 'BDAT 100 LAST\r\n', 'only part of it', 4],
  ])(
    'fails the body when the client goes away %s, and calls no reset for it',
    async (_, command, part, replies) => {
      let failure: unknown;
      const resets: string[] = [];
      let done!: () => void;
      const finished = new Promise<void>((r) => (done = r));
      const { port } = await start({
        async data(body) {
          try {
            await read(body);
          } catch (err) {
            failure = err;
          }
          done();
          return reply(250, '2.0.0', 'Ok');
        },
        reset: (_tx, _s, why) => resets.push(why),
      });
      const c = new Client(port);
      c.write(`EHLO hop.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<b@example.test>\r\n${command}`);
      await c.replies(replies);
      c.write(part);
      await tick();
      c.socket.destroy();
      await finished;
      expect(failure).toBeInstanceOf(Error);
      expect((failure as Error).message).toBe('client disconnected during DATA');
      expect(resets).toEqual([]);
    },
  );

  it('answers bad sequences and syntax with the same words as smtp-server', async () => {
    const { port } = await start();
    const c = new Client(port);
    const steps = [
      'MAIL FROM:<a@b.test>',
      'EHLO hop.test',
      'RCPT TO:<b@example.test>',
      'DATA',
      'MAIL FROM:a@b.test>',
      'MAIL FROM:<a@b.test>',
      'MAIL FROM:<c@b.test>',
      'DATA',
      'RCPT TO:<>',
      'RCPT TO:<1@example.test>',
      'RCPT TO:<2@example.test>',
      'RCPT TO:<3@example.test>',
      'RCPT TO:<4@example.test>',
      'XFORWARD ADDR=999.1.1.1',
      'RSET',
      'XFORWARD ADDR=192.0.2.1 BOGUS=1',
      'XFORWARD NAME=a+0D+0Ab',
      'HELO',
      `NOOP ${'z'.repeat(5000)}`,
      'WIZ',
      'QUIT',
    ];
    c.write(steps.map((s) => s + '\r\n').join(''));
    const r = await c.replies(steps.length + 1);
    expect(r).toEqual([
      '220 mx.example.test ESMTP',
      '503 5.5.1 Error: send HELO/EHLO first',
      '250 XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE',
      '503 5.5.1 Error: need MAIL command',
      '503 5.5.1 Error: need MAIL command',
      '501 5.1.7 Error: Bad sender address syntax',
      '250 2.1.0 Accepted',
      '503 5.5.1 Error: nested MAIL command',
      '503 5.5.1 Error: need RCPT command',
      '501 5.1.3 Error: Bad recipient address syntax',
      '250 2.1.5 Accepted',
      '250 2.1.5 Accepted',
      '250 2.1.5 Accepted',
      '452 4.5.3 Error: too many recipients',
      '503 5.5.1 Error: Mail transaction in progress',
      '250 2.0.0 Flushed',
      '501 5.5.4 Error: Bad command parameter syntax',
      '501 5.5.4 Error: Bad command parameter syntax',
      '501 Error: Syntax: HELO hostname',
      '500 5.5.2 Error: line too long',
      '500 5.5.2 Error: command not recognized',
      '221 2.0.0 Bye',
    ]);
    await c.ended();
  });

  it('reads XFORWARD values as UTF-8, so a non-ASCII HELO reaches the next Received header intact', async () => {
    const { port, got } = await start();
    const c = new Client(port);
    await c.replies(1);
    // what our relay client sends for the HELO "bücher.test": the UTF-8 bytes, xtext-encoded
    c.write(
      'EHLO hop.test\r\nXFORWARD ADDR=192.0.2.7 HELO=b+C3+BCcher.test\r\n' +
        'MAIL FROM:<a@remote.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n',
    );
    await c.replies(6);
    c.write('Subject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n');
    await c.ended();
    expect(got.txs[0]!.client.helo).toBe('bücher.test');
  });

  it('answers a long malformed EHLO or XFORWARD NAME at once, without holding the other sessions', async () => {
    const { port } = await start();
    const c = new Client(port);
    await c.replies(1);
    const started = Date.now();
    c.write(`EHLO ${'a'.repeat(28)}!\r\nEHLO hop.test\r\nXFORWARD NAME=${'b'.repeat(28)}!\r\n`);
    const r = await c.replies(4);
    expect(r[1]).toBe('501 Error: Bad hostname syntax');
    expect(r[3]).toBe('501 5.5.4 Error: Bad command parameter syntax. Invalid hostname');
    // the pattern this replaced took over a second of CPU for each of these, seconds more per letter
    expect(Date.now() - started).toBeLessThan(300);
    c.write('EHLO a-b.c_d.example.\r\nEHLO [IPv6:::1]\r\nEHLO -a.test\r\nEHLO a..test\r\nQUIT\r\n');
    const more = await c.replies(9);
    expect(more.slice(4, 8).map((l) => l.slice(0, 3))).toEqual(['250', '250', '501', '501']);
  });

  it('refuses XFORWARD where it is not enabled', async () => {
    const { port } = await start({}, { xforward: false });
    const c = new Client(port);
    c.write('EHLO hop.test\r\nXFORWARD ADDR=192.0.2.1\r\n');
    const r = await c.replies(3);
    expect(r[1]).toBe('250 SIZE 1048576');
    expect(r[2]).toBe('550 5.7.0 Error: Not allowed');
    c.socket.destroy();
  });

  it('ends a session after ten unrecognized commands with 421', async () => {
    const { port } = await start();
    const c = new Client(port);
    c.write('BOGUS\r\n'.repeat(12));
    await c.ended();
    expect(c.lines.slice(1)).toEqual([
      ...Array<string>(9).fill('500 5.5.2 Error: command not recognized'),
      '421 4.4.2 Error: too many unrecognized commands',
    ]);
  });

  it('closes an idle session after idleTimeoutMs with 421 4.4.2', async () => {
    const { port } = await start({}, { idleTimeoutMs: 200 });
    const c = new Client(port);
    c.write('EHLO hop.test\r\n');
    const t = Date.now();
    await c.ended();
    expect(c.lines.at(-1)).toBe('421 4.4.2 Timeout - closing connection');
    expect(Date.now() - t).toBeGreaterThanOrEqual(150);
  });

  it('stops reading the commands of a client that never reads its replies', async () => {
    const { port } = await start();
    const socket = net.connect({ port, host: '127.0.0.1' });
    socket.on('error', () => undefined);
    socket.pause(); // the replies are never read
    await new Promise((r) => socket.once('connect', r));
    const chunk = Buffer.from('HELP\r\n'.repeat(64 * 1024));
    let written = 0;
    const taken = () => written - socket.writableLength;
    // keep 4 MB in flight while the server takes them, for at most 4 s
    const until = Date.now() + 4000;
    while (Date.now() < until && taken() < 64 * 1024 * 1024) {
      while (socket.writableLength < 4 * 1024 * 1024) {
        socket.write(chunk);
        written += chunk.length;
      }
      await new Promise((r) => setTimeout(r, 20));
    }
    // without backpressure on its replies the server takes it all (64 MB of commands, and holds about
    // ten times that in replies); with it, what the socket buffers hold
    expect(taken()).toBeLessThan(16 * 1024 * 1024);
    socket.destroy();
  });

  it('tells a data handler still working that its client has gone (session.closed)', async () => {
    const seen: boolean[] = [];
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    const { port } = await start({
      async data(body, tx, session) {
        await read(body);
        seen.push(session.closed);
        await held;
        seen.push(session.closed);
        return reply(250, '2.0.0', `Ok: queued as ${tx.id}`);
      },
    });
    const c = new Client(port);
    c.write('EHLO hop.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n');
    await c.replies(5);
    c.write('Subject: x\r\n\r\nhi\r\n.\r\n');
    while (seen.length < 1) await tick();
    c.socket.destroy();
    await tick();
    release();
    while (seen.length < 2) await tick();
    expect(seen).toEqual([false, true]);
  });

  it('on close, answers idle sessions 421 at once and lets a busy one finish first', async () => {
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    const { port } = await start({
      async data(body) {
        await read(body);
        await held;
        return reply(250, '2.0.0', 'Ok: done');
      },
    });
    const idle = new Client(port);
    const busy = new Client(port);
    await idle.replies(1);
    busy.write('EHLO hop.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n');
    await busy.replies(5);
    busy.write('hello\r\n.\r\nNOOP\r\n');
    await tick();
    const closing = listener!.close();
    await idle.ended();
    expect(idle.lines.at(-1)).toBe('421 4.3.2 Service shutting down, closing transmission channel');
    release();
    await busy.ended();
    expect(busy.lines.slice(-2)).toEqual([
      '250 2.0.0 Ok: done',
      '421 4.3.2 Service shutting down, closing transmission channel',
    ]);
    await closing;
    listener = undefined;
  });
});

describe('BDAT (RFC 3030) on the lean listener', () => {
  const ENVELOPE = 'EHLO hop.test\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<b@example.test>\r\n';

  it('offers CHUNKING, and answers an envelope with BDAT LAST in one write, after the handler', async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const { port, got } = await start({
      async data(body, tx) {
        got.bodies.push(await read(body));
        await gate;
        return reply(250, '2.0.0', `Ok: queued as ${tx.id}`);
      },
    });
    const c = new Client(port);
    c.write('EHLO hop.test\r\n');
    await c.replies(2);
    expect(c.lines).toContain('250-CHUNKING');
    const before = c.reads.length;
    const msg = 'Subject: hi\r\n\r\n.leading dot stays\r\nno final line ending';
    c.write(`MAIL FROM:<a@remote.test>\r\nRCPT TO:<b@example.test>\r\nBDAT ${msg.length} LAST\r\n${msg}`);
    await tick();
    // the replies wait for the handler: none has left yet
    expect(c.reads.length).toBe(before);
    release();
    const r = await c.replies(5);
    expect(r.slice(2)).toEqual([
      '250 2.1.0 Accepted',
      '250 2.1.5 Accepted',
      expect.stringMatching(/^250 2\.0\.0 Ok: queued as \w{12}$/),
    ]);
    expect(c.reads.length - before).toBe(1);
    // no dot-unstuffing, and a CRLF at the end as DATA's end gives
    expect(got.bodies[0]!.toString()).toBe(`${msg}\r\n`);
    c.socket.destroy();
  });

  it('takes chunks with commands between them, and applies the line-ending rule across them', async () => {
    const { port, got } = await start();
    const c = new Client(port);
    c.write(`${ENVELOPE}BDAT 7\r\nA\r\nx\n.\r`);
    expect((await c.replies(5))[4]).toBe('250 2.0.0 OK: 7 octets received');
    c.write('NOOP\r\nBDAT 4\r\n\nB\r\nBDAT 0 LAST\r\n');
    const r = await c.replies(8);
    expect(r.slice(5, 7)).toEqual(['250 2.0.0 OK', '250 2.0.0 OK: 4 octets received']);
    expect(r[7]).toMatch(/^250 2\.0\.0 Ok: queued as /);
    // bare LF and the CR split from its LF became CRLF: the "." line is inside the message
    expect(got.bodies[0]!.toString()).toBe('A\r\nx\r\n.\r\nB\r\n');
    c.socket.destroy();
  });

  it('reads and drops the bytes of a refused chunk, so they are never taken as commands', async () => {
    const { port, got } = await start();
    const c = new Client(port);
    const smuggled = 'RSET\r\nMAIL FROM:<evil@remote.test>\r\n';
    c.write(`EHLO hop.test\r\nBDAT ${smuggled.length} LAST\r\n${smuggled}NOOP\r\n`);
    expect((await c.replies(4)).slice(2)).toEqual(['503 5.5.1 Error: need MAIL command', '250 2.0.0 OK']);
    c.write(`MAIL FROM:<a@remote.test>\r\nBDAT ${smuggled.length} LAST\r\n${smuggled}NOOP\r\n`);
    expect((await c.replies(7)).slice(4)).toEqual([
      '250 2.1.0 Accepted',
      '503 5.5.1 Error: need RCPT command',
      '250 2.0.0 OK',
    ]);
    expect(got.bodies).toEqual([]);
    c.socket.destroy();
  });

  it('ends the session on a BDAT count it cannot read (the chunk has no known end)', async () => {
    const { port } = await start();
    const c = new Client(port);
    c.write(`${ENVELOPE}BDAT ten LAST\r\nMAIL FROM:<x@remote.test>\r\n`);
    await c.ended();
    expect(c.lines.at(-1)).toBe('501 5.5.4 Error: Syntax: BDAT count [LAST]');
  });

  it('keeps DATA and other commands out of a chunked transaction; RSET ends it and fails its body', async () => {
    let failure: unknown;
    const { port, got } = await start({
      async data(body) {
        try {
          got.bodies.push(await read(body));
        } catch (err) {
          failure = err;
        }
        return reply(250, '2.0.0', 'Ok');
      },
    });
    const c = new Client(port);
    c.write(`${ENVELOPE}BDAT 3\r\nabcDATA\r\nRCPT TO:<c@example.test>\r\nMAIL FROM:<>\r\nRSET\r\n`);
    const r = await c.replies(9);
    expect(r.slice(4)).toEqual([
      '250 2.0.0 OK: 3 octets received',
      '503 5.5.1 Error: BDAT transaction in progress',
      '503 5.5.1 Error: BDAT transaction in progress',
      '503 5.5.1 Error: nested MAIL command',
      '250 2.0.0 Flushed',
    ]);
    await tick();
    expect(failure).toBeInstanceOf(Error);
    expect(got.bodies).toEqual([]);
    // a new transaction goes through
    c.write('MAIL FROM:<>\r\nRCPT TO:<b@example.test>\r\nBDAT 4 LAST\r\nxyz\n');
    expect((await c.replies(12))[11]).toBe('250 2.0.0 Ok');
    expect(got.bodies[0]!.toString()).toBe('xyz\r\n');
    c.socket.destroy();
  });

  it('stops chunks past the size limit with 552 5.3.4 and keeps the session', async () => {
    const { port } = await start({}, { messageSizeLimit: 1000 });
    const c = new Client(port);
    const chunk = 'x'.repeat(600);
    c.write(`${ENVELOPE}BDAT 600\r\n${chunk}BDAT 600\r\n${chunk}BDAT 0 LAST\r\nNOOP\r\n`);
    const r = await c.replies(8);
    expect(r.slice(4)).toEqual([
      '250 2.0.0 OK: 600 octets received',
      '552 5.3.4 Message size exceeds fixed limit',
      '552 5.3.4 Message size exceeds fixed limit',
      '250 2.0.0 OK',
    ]);
    c.socket.destroy();
  });
});

describe('parsePath', () => {
  it('reads the address and its parameters', () => {
    expect(parsePath('FROM:<a@b.test> SIZE=10 SMTPUTF8', 'FROM')).toEqual({
      address: 'a@b.test',
      args: { SIZE: '10', SMTPUTF8: true },
    });
    expect(parsePath('from: <>', 'FROM')).toEqual({ address: '', args: false });
    expect(parsePath('TO:<"a>b"@example.test>', 'TO')).toEqual({
      address: '"a>b"@example.test',
      args: false,
    });
    expect(parsePath('TO:<@relay.test:u@example.test>', 'TO')?.address).toBe('@relay.test:u@example.test');
    expect(parsePath('TO:<a@b.test', 'TO')).toBeUndefined();
    expect(parsePath('TO:<a@b.test>x', 'TO')).toBeUndefined();
    expect(parsePath('FROM:<a@b.test>', 'TO')).toBeUndefined();
    expect(parsePath('TO:<>', 'TO')).toBeUndefined();
  });

  it('decodes parameter values from xtext, as smtp-server does, and refuses one that hides a control character', () => {
    expect(parsePath('FROM:<a@b.test> ENVID=x+20SIZE+3D9 RET=HDRS', 'FROM')?.args).toEqual({
      ENVID: 'x SIZE=9',
      RET: 'HDRS',
    });
    expect(parsePath('TO:<c@d.test> ORCPT=rfc822;user+2B2024@example.com', 'TO')?.args).toEqual({
      ORCPT: 'rfc822;user+2024@example.com',
    });
    expect(parsePath('FROM:<a@b.test> ENVID=ab+0D+0Acd', 'FROM')).toBeUndefined();
  });
});
