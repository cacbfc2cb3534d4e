import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { eicar, startClamd, type ClamdHandle } from '@moat/daemons';
import { ClamdClient, ClamdError, classifyClamd, virusCheck } from './virus.js';

const message = (body: string) => () =>
  Readable.from([Buffer.from(`Subject: x\r\n\r\n${body}\r\n`, 'latin1')]);
const listen = (server: net.Server, where: number | string = 0) =>
  new Promise<void>((r) =>
    typeof where === 'string' ? server.listen(where, r) : server.listen(where, '127.0.0.1', r),
  );
const tcpPort = (server: net.Server) => (server.address() as net.AddressInfo).port;
const until = async (cond: () => boolean, ms = 2000) => {
  for (const end = Date.now() + ms; !cond();) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
};

type Action = 'ok' | 'close' | 'silent' | { reply: string; close?: boolean };

/**
 * A clamd that speaks just enough IDSESSION: each zINSTREAM asks `act(command number on this
 * connection, connection number)`: 'close' closes at once (before reading the data), 'silent' never
 * answers, 'ok' answers `<id>: stream: OK` after the last chunk, or a given reply.
 */
async function fakeClamd(act: (n: number, conn: number) => Action = () => 'ok') {
  const state = { connections: 0, ended: 0, closedByClient: 0, sockets: new Set<net.Socket>() };
  const server = net.createServer((s) => {
    const conn = ++state.connections;
    state.sockets.add(s);
    let buf = Buffer.alloc(0);
    let n = 0;
    let streaming: Action | undefined;
    let closing = false;
    s.on('close', () => {
      state.sockets.delete(s);
      if (!closing) state.closedByClient++;
    });
    s.on('error', () => {});
    s.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      for (;;) {
        if (streaming) {
          if (buf.length < 4) return;
          const len = buf.readUInt32BE(0);
          if (buf.length < 4 + len) return;
          buf = buf.subarray(4 + len);
          if (len) continue;
          const a = streaming;
          streaming = undefined;
          if (a === 'silent') return;
          const reply = a === 'ok' ? 'stream: OK' : typeof a === 'object' ? a.reply : '';
          s.write(`${n}: ${reply}\0`);
          if (typeof a === 'object' && a.close) {
            closing = true;
            s.end();
          }
          continue;
        }
        const nul = buf.indexOf(0);
        if (nul < 0) return;
        const cmd = buf.toString('latin1', 0, nul);
        buf = buf.subarray(nul + 1);
        if (cmd === 'zEND') {
          state.ended++;
          closing = true;
          s.end();
          return;
        }
        if (cmd !== 'zINSTREAM') continue; // zIDSESSION
        const a = act(++n, conn);
        if (a === 'close') {
          closing = true;
          s.destroy();
          return;
        }
        streaming = a;
      }
    });
  });
  await listen(server);
  return {
    state,
    target: { host: '127.0.0.1', port: tcpPort(server) },
    close: () => {
      for (const s of state.sockets) s.destroy();
      return new Promise<void>((r) => server.close(() => r()));
    },
  };
}

describe('clamd sessions: the pool', () => {
  it('runs one scan after another on one connection, and ends idle sessions with zEND on close()', async () => {
    const fake = await fakeClamd();
    const client = new ClamdClient(fake.target);
    for (let i = 0; i < 5; i++) expect(await client.instream(message(`hello ${i}`), 2000)).toBe('stream: OK');
    expect(fake.state.connections).toBe(1);
    expect(client.idleSessions).toBe(1);
    client.close();
    await until(() => fake.state.ended === 1);
    expect(client.idleSessions).toBe(0);
    await fake.close();
  });

  it('keeps at most maxIdle sessions after a burst, and reuses them', async () => {
    const fake = await fakeClamd();
    const client = new ClamdClient(fake.target, { maxIdle: 3 });
    const burst = await Promise.all(
      Array.from({ length: 6 }, (_, i) => client.instream(message(`m${i}`), 2000)),
    );
    expect(burst).toEqual(Array(6).fill('stream: OK'));
    expect(fake.state.connections).toBe(6);
    expect(client.idleSessions).toBe(3);
    await until(() => fake.state.ended === 3);
    await Promise.all(Array.from({ length: 3 }, (_, i) => client.instream(message(`n${i}`), 2000)));
    expect(fake.state.connections).toBe(6);
    client.close();
    await fake.close();
  });

  it('a pooled session closed before it answered is replaced transparently, on a new connection', async () => {
    // clamd closes the first connection just as the second command arrives (its read timeout)
    const fake = await fakeClamd((n, conn) => (conn === 1 && n === 2 ? 'close' : 'ok'));
    const client = new ClamdClient(fake.target);
    expect(await client.instream(message('one'), 2000)).toBe('stream: OK');
    expect(await client.instream(message('two'), 2000)).toBe('stream: OK');
    expect(fake.state.connections).toBe(2);
    expect(await client.instream(message('three'), 2000)).toBe('stream: OK');
    expect(fake.state.connections).toBe(2);
    client.close();
    await fake.close();
  });

  it('retries only once, and never a fresh connection', async () => {
    const fake = await fakeClamd((n, conn) => (conn === 1 && n === 1 ? 'ok' : 'close'));
    const client = new ClamdClient(fake.target);
    expect(await client.instream(message('one'), 2000)).toBe('stream: OK');
    const err = await client.instream(message('two'), 2000).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ClamdError);
    expect(err).toMatchObject({ kind: 'closed' });
    expect(fake.state.connections).toBe(2);
    await expect(client.instream(message('three'), 2000)).rejects.toMatchObject({ kind: 'closed' });
    expect(fake.state.connections).toBe(3);
    client.close();
    await fake.close();
  });

  it('drops a session that clamd times out while idle (COMMAND READ TIMED OUT)', async () => {
    const fake = await fakeClamd();
    const client = new ClamdClient(fake.target);
    expect(await client.instream(message('one'), 2000)).toBe('stream: OK');
    for (const s of fake.state.sockets) s.end('COMMAND READ TIMED OUT\n');
    await until(() => client.idleSessions === 0);
    expect(await client.instream(message('two'), 2000)).toBe('stream: OK');
    expect(fake.state.connections).toBe(2);
    client.close();
    await fake.close();
  });

  it('does not reuse a session after an error reply (clamd closes it): size limit', async () => {
    const fake = await fakeClamd((n, conn) =>
      conn === 1 && n === 1 ? { reply: 'INSTREAM size limit exceeded. ERROR', close: true } : 'ok',
    );
    const client = new ClamdClient(fake.target);
    const reply = await client.instream(message('big'), 2000);
    expect(classifyClamd(reply)).toEqual({ kind: 'limit', what: 'INSTREAM size limit exceeded' });
    expect(client.idleSessions).toBe(0);
    expect(await client.instream(message('small'), 2000)).toBe('stream: OK');
    expect(fake.state.connections).toBe(2);
    client.close();
    await fake.close();
  });

  it('a timeout is an error and destroys the session; the next scan gets a new connection', async () => {
    const fake = await fakeClamd((n, conn) => (conn === 1 && n === 2 ? 'silent' : 'ok'));
    const client = new ClamdClient(fake.target);
    expect(await client.instream(message('one'), 2000)).toBe('stream: OK');
    const started = Date.now();
    await expect(client.instream(message('two'), 300)).rejects.toMatchObject({
      kind: 'timeout',
      message: 'clamd: no verdict within 300 ms',
    });
    expect(Date.now() - started).toBeLessThan(1500);
    expect(client.idleSessions).toBe(0);
    await until(() => fake.state.closedByClient === 1);
    const r = await virusCheck(
      { size: 1, stream: message('three') },
      { clamd: client, timeoutMs: 2000, encryptedArchives: 'unchecked' },
    );
    expect(r.outcome).toBe('pass');
    expect(fake.state.connections).toBe(2);
    client.close();
    await fake.close();
  });

  it('ends sessions idle for longer than idleMs', async () => {
    const fake = await fakeClamd();
    const client = new ClamdClient(fake.target, { idleMs: 50 });
    expect(await client.instream(message('one'), 2000)).toBe('stream: OK');
    expect(client.idleSessions).toBe(1);
    await until(() => fake.state.ended === 1);
    expect(client.idleSessions).toBe(0);
    client.close();
    await fake.close();
  });

  it('a spool that fails to read is an error, not a verdict, and the session is not reused', async () => {
    const fake = await fakeClamd();
    const client = new ClamdClient(fake.target);
    const broken = () =>
      new Readable({
        read() {
          this.destroy(new Error('spool unreadable'));
        },
      });
    await expect(client.instream(broken, 2000)).rejects.toThrow('spool unreadable');
    expect(client.idleSessions).toBe(0);
    client.close();
    await fake.close();
  });
});

/** Forwards connections to `upstream`, counting them; `stalled` stops forwarding (a hung clamd). */
async function countingProxy(upstream: net.NetConnectOpts, where: number | string = 0) {
  const state = { connections: 0, stalled: false };
  const open = new Set<net.Socket>();
  const server = net.createServer((down) => {
    state.connections++;
    const up = net.connect(upstream);
    for (const s of [down, up]) {
      open.add(s);
      s.on('error', () => {});
      s.on('close', () => {
        open.delete(s);
        down.destroy();
        up.destroy();
      });
    }
    down.on('data', (d) => !state.stalled && up.write(d));
    up.on('data', (d) => !state.stalled && down.write(d));
  });
  await listen(server, where);
  return {
    state,
    address: typeof where === 'string' ? where : `127.0.0.1:${tcpPort(server)}`,
    target: typeof where === 'string' ? { path: where } : { host: '127.0.0.1', port: tcpPort(server) },
    close: () => {
      for (const s of open) s.destroy();
      return new Promise<void>((r) => server.close(() => r()));
    },
  };
}

describe('clamd sessions with the real clamd', () => {
  const stateDir = path.join(os.tmpdir(), `moat-filter-sessions-${process.pid}`);
  let clamd: ClamdHandle;
  beforeAll(async () => {
    clamd = await startClamd({ stateDir });
  }, 30_000);
  afterAll(async () => {
    await clamd?.stop();
    fs.rmSync(stateDir, { recursive: true, force: true });
  });

  const deps = (client: ClamdClient) => ({
    clamd: client,
    timeoutMs: 10_000,
    encryptedArchives: 'unchecked' as const,
  });
  const scan = (client: ClamdClient, body: string) =>
    virusCheck({ size: body.length, stream: message(body) }, deps(client));

  it('finds EICAR and passes clean mail, many scans on ONE connection (TCP and unix socket)', async () => {
    const tcp = await countingProxy({ host: '127.0.0.1', port: clamd.port });
    const unix = await countingProxy({ path: clamd.socket }, path.join(stateDir, 'proxy.sock'));
    for (const proxy of [tcp, unix]) {
      const client = new ClamdClient(proxy.target);
      for (let i = 0; i < 4; i++) {
        const bad = await scan(client, eicar());
        expect(bad.outcome).toBe('fail');
        expect(bad.detail).toMatch(/^INFECTED: Eicar-Test-Signature/);
        expect((await scan(client, `hello ${i}`)).outcome).toBe('pass');
      }
      // a message larger than one chunk, with backpressure
      expect((await scan(client, 'x'.repeat(3 << 20))).outcome).toBe('pass');
      expect(proxy.state.connections).toBe(1);
      expect(client.idleSessions).toBe(1);
      client.close();
      await proxy.close();
    }
  });

  it('a session closed by clamd (restarted between scans) is replaced transparently', async () => {
    const proxy = await countingProxy({ host: '127.0.0.1', port: clamd.port });
    const client = new ClamdClient(proxy.target);
    expect((await scan(client, 'before')).outcome).toBe('pass');
    await clamd.stop();
    clamd = await startClamd({ stateDir, port: clamd.port });
    expect((await scan(client, eicar())).outcome).toBe('fail');
    expect((await scan(client, 'after')).outcome).toBe('pass');
    expect(proxy.state.connections).toBe(2);
    client.close();
    await proxy.close();
  }, 30_000);

  it('a hung clamd times out as an error; the session is dropped and the next scan works', async () => {
    const proxy = await countingProxy({ host: '127.0.0.1', port: clamd.port });
    const client = new ClamdClient(proxy.target);
    expect((await scan(client, 'one')).outcome).toBe('pass');
    proxy.state.stalled = true;
    const r = await virusCheck(
      { size: 3, stream: message('two') },
      { clamd: client, timeoutMs: 300, encryptedArchives: 'unchecked' },
    );
    expect(r).toMatchObject({ outcome: 'error', detail: 'clamd: no verdict within 300 ms' });
    expect(client.idleSessions).toBe(0);
    proxy.state.stalled = false;
    expect((await scan(client, eicar())).outcome).toBe('fail');
    expect(proxy.state.connections).toBe(2);
    client.close();
    await proxy.close();
  });
});
