/**
 * SpamdClient against fake servers on loopback and on a unix socket: the exact request bytes, the
 * write pattern (head with the first body bytes, large chunks, backpressure), every failure kind
 * (connect, timeout in each phase, closed, protocol, server, too-large, input) and its timing.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { tmpDir, which } from '@moat/testkit';
import { SpamdClient, SpamdError, type SpamdErrorKind } from './index.js';

const GTUBE_CHECK = 'SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1000.0 / 5.0\r\n\r\n';
const MESSAGE = Buffer.from('From: a@example.org\r\nSubject: hi\r\n\r\nHello\r\n');

interface Captured {
  head: string;
  body: Buffer;
}

type Behaviour = (sock: net.Socket, request: Promise<Captured>) => void;

/** A fake spamd: reads each request to the client's half-close, then does what `behaviour` says. */
class FakeSpamd {
  readonly server: net.Server;
  readonly requests: Captured[] = [];
  readonly sockets = new Set<net.Socket>();
  connections = 0;
  behaviour: Behaviour = (sock, req) => void req.then(() => sock.end(GTUBE_CHECK));

  constructor() {
    // allowHalfOpen: the client half-closes after the body, as spamc does; spamd still answers.
    this.server = net.createServer({ allowHalfOpen: true }, (sock) => {
      this.connections++;
      this.sockets.add(sock);
      sock.on('close', () => this.sockets.delete(sock));
      sock.on('error', () => undefined);
      const chunks: Buffer[] = [];
      const request = new Promise<Captured>((resolve) => {
        sock.on('data', (c: Buffer) => chunks.push(c));
        sock.on('end', () => {
          const all = Buffer.concat(chunks);
          const split = all.indexOf('\r\n\r\n');
          const captured = {
            head: all.subarray(0, split + 4).toString('latin1'),
            body: all.subarray(split + 4),
          };
          this.requests.push(captured);
          resolve(captured);
        });
      });
      this.behaviour(sock, request);
    });
  }

  listen(where: number | string = 0): Promise<string> {
    return new Promise((resolve) => {
      const done = () => {
        const a = this.server.address();
        resolve(typeof a === 'string' ? a : `127.0.0.1:${(a as net.AddressInfo).port}`);
      };
      if (typeof where === 'string') this.server.listen(where, done);
      else this.server.listen(where, '127.0.0.1', done);
    });
  }

  close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

async function failure(p: Promise<unknown>): Promise<SpamdError> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(SpamdError);
    return err as SpamdError;
  }
  throw new Error('expected a SpamdError');
}

async function timed<T>(p: Promise<T>): Promise<{ value: T; ms: number }> {
  const t = Date.now();
  const value = await p;
  return { value, ms: Date.now() - t };
}

function chunks(total: number, size: number): Buffer[] {
  const out: Buffer[] = [];
  for (let sent = 0; sent < total; sent += size)
    out.push(Buffer.alloc(Math.min(size, total - sent), 0x61 + (out.length % 26)));
  return out;
}

let fake: FakeSpamd;
let address: string;
const dir = tmpDir('spamd-client-');

beforeAll(async () => {
  fake = new FakeSpamd();
  address = await fake.listen();
});

afterEach(() => {
  vi.restoreAllMocks();
  fake.requests.length = 0;
  fake.behaviour = (sock, req) => void req.then(() => sock.end(GTUBE_CHECK));
});

afterAll(async () => {
  await fake.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('requests', () => {
  it('sends the exact request: line, Content-length, User, blank line, body; no Compress', async () => {
    const client = new SpamdClient(address, { user: 'default-user' });
    const r = await client.check(MESSAGE);
    expect(r).toMatchObject({ isSpam: true, score: 1000, threshold: 5, truncated: false });
    expect(fake.requests[0]!.head).toBe(
      `CHECK SPAMC/1.5\r\nContent-length: ${MESSAGE.length}\r\nUser: default-user\r\n\r\n`,
    );
    expect(fake.requests[0]!.body).toEqual(MESSAGE);

    await client.report(MESSAGE, { user: 'bob' }).catch(() => undefined);
    expect(fake.requests[1]!.head).toMatch(/^REPORT SPAMC\/1\.5\r\n.*User: bob\r\n/s);
    expect(fake.requests.map((q) => q.head).join('')).not.toMatch(/compress/i);
  });

  it('writes a small message in one write, head and body together, with no-delay on', async () => {
    const write = vi.spyOn(net.Socket.prototype, 'write');
    const noDelay = vi.spyOn(net.Socket.prototype, 'setNoDelay');
    await new SpamdClient(address).check(MESSAGE);
    const ours = write.mock.calls.filter(
      ([b]) => Buffer.isBuffer(b) && b.toString('latin1').startsWith('CHECK'),
    );
    expect(ours).toHaveLength(1);
    expect((ours[0]![0] as Buffer).subarray(-MESSAGE.length)).toEqual(MESSAGE);
    expect(noDelay).toHaveBeenCalledWith(true);
  });

  it('streams 200 KB given in 1 000 small chunks as a few large writes, bytes intact', async () => {
    const parts = chunks(200 * 1024, 205);
    const whole = Buffer.concat(parts);
    const write = vi.spyOn(net.Socket.prototype, 'write');
    const r = await new SpamdClient(address).check({ stream: Readable.from(parts), length: whole.length });
    expect(r.isSpam).toBe(true);
    expect(fake.requests[0]!.body.equals(whole)).toBe(true);
    const writes = write.mock.calls.map(([b]) => b as Buffer);
    expect(writes[0]!.toString('latin1')).toMatch(/^CHECK SPAMC\/1\.5\r\nContent-length: 204800\r\n\r\naaaa/);
    expect(writes[0]!.length).toBeGreaterThanOrEqual(64 * 1024);
    expect(writes.length).toBeLessThanOrEqual(5);
  });

  it('waits for drain: a reader that stops reading stops the stream being read', async () => {
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    fake.behaviour = (sock, req) => {
      sock.pause();
      void released.then(() => sock.resume());
      void req.then(() => sock.end(GTUBE_CHECK));
    };
    const total = 48 * 1024 * 1024;
    let produced = 0;
    async function* source() {
      const chunk = Buffer.alloc(64 * 1024, 0x61);
      while (produced < total) {
        produced += chunk.length;
        yield chunk;
      }
    }
    const pending = new SpamdClient(address, { timeoutMs: 20_000 }).check({
      stream: source(),
      length: total,
    });
    await new Promise((r) => setTimeout(r, 400));
    expect(produced).toBeLessThan(total / 2);
    release();
    await pending;
    expect(produced).toBe(total);
    expect(fake.requests[0]!.body.length).toBe(total);
  });

  it('truncates to maxSize when asked, sending exactly maxSize bytes and stopping the stream', async () => {
    const parts = chunks(100_000, 1000);
    const stream = Readable.from(parts);
    const r = await new SpamdClient(address, { maxSize: 10_500, truncate: true }).check({
      stream,
      length: 100_000,
    });
    expect(r.truncated).toBe(true);
    expect(fake.requests[0]!.head).toContain('Content-length: 10500\r\n');
    expect(fake.requests[0]!.body.equals(Buffer.concat(parts).subarray(0, 10_500))).toBe(true);
    expect(stream.destroyed).toBe(true);

    const b = await new SpamdClient(address, { maxSize: 5, truncate: true }).check(MESSAGE);
    expect(b.truncated).toBe(true);
    expect(fake.requests[1]!.body.toString()).toBe('From:');
  });

  it('refuses a message over maxSize without connecting', async () => {
    const before = fake.connections;
    const err = await failure(new SpamdClient(address, { maxSize: 10 }).check(MESSAGE));
    expect(err).toMatchObject({ kind: 'too-large', phase: 'prepare' });
    expect(fake.connections).toBe(before);
  });

  it('talks over a unix socket (a replay of spamd 4.0.1 answers)', async () => {
    const sockFake = new FakeSpamd();
    const socketPath = path.join(dir, 'spamd.sock');
    await sockFake.listen(socketPath);
    try {
      const client = new SpamdClient(socketPath);
      expect(client.addressText).toBe(`unix:${socketPath}`);
      expect(await client.check(MESSAGE)).toMatchObject({ isSpam: true, score: 1000 });
      sockFake.behaviour = (sock, req) => void req.then(() => sock.end('SPAMD/1.5 0 PONG\r\n'));
      expect((await new SpamdClient(`unix:${socketPath}`).ping()).version).toBe('1.5');
      expect(sockFake.requests[1]!.head).toBe('PING SPAMC/1.5\r\n\r\n');
    } finally {
      await sockFake.close();
    }
  });
});

describe('failures', () => {
  async function expectKind(p: Promise<unknown>, kind: SpamdErrorKind): Promise<SpamdError> {
    const err = await failure(p);
    expect(err.kind, err.message).toBe(kind);
    expect(err.address).toBeTruthy();
    return err;
  }

  it('connection refused: kind connect', async () => {
    const probe = net.createServer();
    await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
    const port = (probe.address() as net.AddressInfo).port;
    await new Promise((r) => probe.close(r));
    const err = await expectKind(new SpamdClient({ host: '127.0.0.1', port }).check(MESSAGE), 'connect');
    expect(err.phase).toBe('connect');
    expect(err.message).toMatch(/ECONNREFUSED/);
  });

  it('no such unix socket: kind connect', async () => {
    await expectKind(new SpamdClient(path.join(dir, 'missing.sock')).ping(), 'connect');
  });

  it('a server that accepts and never answers: kind timeout within timeoutMs', async () => {
    fake.behaviour = () => undefined;
    const { value: err, ms } = await timed(
      expectKind(new SpamdClient(address, { timeoutMs: 300 }).check(MESSAGE), 'timeout'),
    );
    expect(err.phase).toBe('receive');
    expect(err.message).toMatch(/timed out after 300 ms/);
    expect(ms).toBeGreaterThanOrEqual(290);
    expect(ms).toBeLessThan(800);
  });

  it('a message stream that stalls: kind timeout in phase send, the stream destroyed', async () => {
    const stream = new Readable({ read() {} });
    stream.push(MESSAGE);
    const err = await expectKind(
      new SpamdClient(address, { timeoutMs: 250 }).check({ stream, length: MESSAGE.length + 10 }),
      'timeout',
    );
    expect(err.phase).toBe('send');
    expect(stream.destroyed).toBe(true);
  });

  it.skipIf(!which('python3'))(
    'a listener whose backlog is full: kind timeout in phase connect',
    async () => {
      // python3 listens with a backlog of 0 and never accepts: after one queued connection, the
      // kernel drops further SYNs, so a connect hangs (Node's net server always accepts).
      const py = spawn(
        'python3',
        [
          '-c',
          'import socket,sys\ns=socket.socket();s.bind(("127.0.0.1",0));s.listen(0)\nprint(s.getsockname()[1],flush=True)\nsys.stdin.read()',
        ],
        { stdio: ['pipe', 'pipe', 'inherit'] },
      );
      try {
        const port = Number(
          await new Promise<string>((r) => py.stdout.once('data', (d: Buffer) => r(d.toString()))),
        );
        const filler = net.connect(port, '127.0.0.1');
        await new Promise((r) => filler.once('connect', r));
        const { value: err, ms } = await timed(
          expectKind(
            new SpamdClient({ host: '127.0.0.1', port }, { connectTimeoutMs: 200 }).ping(),
            'timeout',
          ),
        );
        filler.destroy();
        expect(err.phase).toBe('connect');
        expect(err.message).toMatch(/within 200 ms/);
        expect(ms).toBeLessThan(700);
      } finally {
        py.stdin.end();
        py.kill();
      }
    },
  );

  it('a server that closes mid-response: kind closed, saying where', async () => {
    fake.behaviour = (sock, req) =>
      void req.then(() =>
        sock.end('SPAMD/1.1 0 EX_OK\r\nContent-length: 748\r\nSpam: True ; 1000.0 / 5.0\r\n\r\nX-Spam'),
      );
    const err = await expectKind(new SpamdClient(address).process(MESSAGE), 'closed');
    expect(err.message).toMatch(/after 6 of 748 body bytes/);
    expect(err.phase).toBe('receive');
  });

  it('a server that resets the connection: kind closed', async () => {
    fake.behaviour = (sock, req) => void req.then(() => sock.resetAndDestroy());
    await expectKind(new SpamdClient(address).check(MESSAGE), 'closed');
  });

  it('a server that closes without a word: kind closed', async () => {
    fake.behaviour = (sock, req) => void req.then(() => sock.end());
    const err = await expectKind(new SpamdClient(address).check(MESSAGE), 'closed');
    expect(err.message).toMatch(/before any response/);
  });

  it('something that is not spamd: kind protocol', async () => {
    fake.behaviour = (sock, req) => void req.then(() => sock.end('HTTP/1.1 400 Bad Request\r\n\r\n'));
    await expectKind(new SpamdClient(address).check(MESSAGE), 'protocol');
    fake.behaviour = (sock, req) => void req.then(() => sock.end('SPAMD/1.1 0 EX_OK\r\n\r\n'));
    const err = await expectKind(new SpamdClient(address).check(MESSAGE), 'protocol');
    expect(err.message).toMatch(/no Spam: header/);
    fake.behaviour = (sock) => void sock.end('SPAMD/1.5 0 EX_OK\r\n');
    await expectKind(new SpamdClient(address).ping(), 'protocol');
  });

  it('a spamd error code: kind server with the code and its name, even before the body is read', async () => {
    fake.behaviour = (sock) => void sock.end('SPAMD/1.0 75 EX_TEMPFAIL\r\n');
    const err = await expectKind(new SpamdClient(address).check(MESSAGE), 'server');
    expect(err).toMatchObject({ code: 75, codeName: 'EX_TEMPFAIL', command: 'CHECK' });
  });

  it('a stream shorter or longer than its declared length, or one that fails: kind input', async () => {
    const short = await expectKind(
      new SpamdClient(address).check({ stream: Readable.from([MESSAGE]), length: MESSAGE.length + 1 }),
      'input',
    );
    expect(short.message).toMatch(/ended after \d+ of its declared \d+ bytes/);
    const long = await expectKind(
      new SpamdClient(address).check({ stream: Readable.from([MESSAGE]), length: MESSAGE.length - 1 }),
      'input',
    );
    expect(long.message).toMatch(/more than its declared length/);
    const broken = new Readable({
      read() {
        this.destroy(new Error('disk on fire'));
      },
    });
    const err = await expectKind(new SpamdClient(address).check({ stream: broken, length: 10 }), 'input');
    expect(String((err.cause as Error).message)).toBe('disk on fire');
  });

  it('bad arguments: kind input, before any connection', async () => {
    const before = fake.connections;
    const client = new SpamdClient(address);
    await expectKind(client.check(MESSAGE, { user: 'a\r\nb' }), 'input');
    await expectKind(client.tell(MESSAGE, {}), 'input');
    await expectKind(client.tell(MESSAGE, { set: ['local'] }), 'input');
    await expectKind(
      client.tell(MESSAGE, { messageClass: 'spam', set: ['local'], remove: ['local'] }),
      'input',
    );
    await expectKind(client.request('CHECK'), 'input');
    expect(() => new SpamdClient('host:0')).toThrow(SpamdError);
    expect(() => new SpamdClient(address, { timeoutMs: 0 })).toThrow(/timeoutMs/);
    expect(fake.connections).toBe(before);
  });
});
