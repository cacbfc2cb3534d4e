import { fork, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { decode, handOver, HandoverReceiver, MAX_INITIAL, type HandedSocket } from './index.js';

const dirs: string[] = [];
const closers: (() => void)[] = [];
afterEach(() => {
  for (const c of closers.splice(0)) c();
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

function tmpSocket(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'moat-handover-'));
  dirs.push(d);
  return path.join(d, 'run', 'greylist.sock');
}

/** A TCP client connected to a server socket in this process: [client side, accepted side]. */
async function pair(): Promise<[net.Socket, net.Socket]> {
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const accepted = new Promise<net.Socket>((r) => server.once('connection', r));
  const client = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
  await new Promise((r) => client.once('connect', r));
  const s = await accepted;
  server.close();
  closers.push(() => {
    client.destroy();
    s.destroy();
  });
  return [client, s];
}

/** test/echo-receiver.mjs in its own process, once it listens at `at`. */
async function receiverProcess(at: string): Promise<ChildProcess> {
  const child = fork(path.join(import.meta.dirname, 'test', 'echo-receiver.mjs'), [at], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  closers.push(() => child.kill());
  await new Promise<void>((resolve, reject) => {
    child.once('message', () => resolve());
    child.once('exit', (code) => reject(new Error(`receiver exited ${code}`)));
  });
  return child;
}

const read = (s: net.Socket) => new Promise<string>((r) => s.once('data', (d: Buffer) => r(d.toString())));

describe('handOver and HandoverReceiver', () => {
  it('moves a live connection: the receiver talks to the client directly, with the message and the bytes already read', async () => {
    const at = tmpSocket();
    const got: HandedSocket[] = [];
    const arrived = new Promise<void>((resolve) => {
      const r = HandoverReceiver.listen(
        at,
        (h) => {
          got.push(h);
          resolve();
        },
        (why) => {
          throw new Error(why);
        },
      );
      closers.push(() => r.close());
    });
    expect(fs.statSync(at).mode & 0o777).toBe(0o600);
    const [client, accepted] = await pair();
    const clientPort = client.localPort!;
    const message = {
      source: { address: '192.0.2.7', port: 4711 },
      destination: { address: '198.51.100.1', port: 25 },
      counted: true,
      initial: Buffer.from('EHLO early\r\n'),
    };
    handOver(at, accepted, message);
    expect(accepted.destroyed).toBe(true);
    await arrived;
    const h = got[0]!;
    closers.push(() => h.socket.destroy());
    expect(h.message).toEqual(message);
    // the socket is the client's own connection: its peer is the client's port
    expect(h.socket.remotePort).toBe(clientPort);
    h.socket.write('220 handed over\r\n');
    expect(await read(client)).toBe('220 handed over\r\n');
    client.write('QUIT\r\n');
    expect(await read(h.socket)).toBe('QUIT\r\n');
  });

  it('hands over to another process, and the sender closing its copy does not end the connection', async () => {
    const at = tmpSocket();
    const child = await receiverProcess(at);
    const [client, accepted] = await pair();
    handOver(at, accepted, {
      source: { address: '127.0.0.1', port: client.localPort! },
      destination: { address: '127.0.0.1', port: client.remotePort! },
      counted: false,
    });
    // the other process greets from the handed-over socket, then echoes what the client says
    expect(await read(client)).toBe(`220 pid ${child.pid}\r\n`);
    client.write('PING\r\n');
    expect(await read(client)).toBe('PING\r\n');
  });

  it('throws, leaving the socket open, when there is no receiver or the receiver is gone; a new receiver at the path is found again', async () => {
    const at = tmpSocket();
    const message = {
      source: { address: '127.0.0.1', port: 1 },
      destination: { address: '127.0.0.1', port: 2 },
      counted: true,
    };
    const [client, accepted] = await pair();
    expect(() => handOver(at, accepted, message)).toThrow(expect.objectContaining({ code: 'ENOENT' }));

    // the sender keeps its connection to a receiver; that receiver is killed before it can remove its
    // file: the kept connection is dead, and the path is there with nobody listening
    const first = await receiverProcess(at);
    const [c1, a1] = await pair();
    handOver(at, a1, message);
    expect(await read(c1)).toBe(`220 pid ${first.pid}\r\n`);
    const gone = new Promise((resolve) => first.once('exit', resolve));
    first.kill('SIGKILL');
    await gone;
    expect(fs.statSync(at).isSocket()).toBe(true);
    expect(() => handOver(at, accepted, message)).toThrow(expect.objectContaining({ code: 'ECONNREFUSED' }));
    expect(accepted.destroyed).toBe(false);
    accepted.write('still here\r\n');
    expect(await read(client)).toBe('still here\r\n');

    // a receiver started again at the same path gets the next one
    const second = await receiverProcess(at);
    handOver(at, accepted, message);
    expect(await read(client)).toBe(`220 pid ${second.pid}\r\n`);
  });

  it('refuses more bytes already read than one message carries (E2BIG), leaving the socket open', async () => {
    const at = tmpSocket();
    const r = HandoverReceiver.listen(
      at,
      () => undefined,
      () => undefined,
    );
    closers.push(() => r.close());
    const [client, accepted] = await pair();
    const message = {
      source: { address: '127.0.0.1', port: 1 },
      destination: { address: '127.0.0.1', port: 2 },
      counted: true,
      initial: Buffer.alloc(MAX_INITIAL + 1, 0x41),
    };
    expect(() => handOver(at, accepted, message)).toThrow(expect.objectContaining({ code: 'E2BIG' }));
    accepted.write('still here\r\n');
    expect(await read(client)).toBe('still here\r\n');
  });

  it('binds and reaches a path of 107 bytes, the most a Unix socket path holds, and refuses 108', async () => {
    const d = fs.mkdtempSync(path.join(os.tmpdir(), 'moat-handover-'));
    dirs.push(d);
    const at = path.join(d, 'x'.repeat(107 - d.length - 1));
    expect(Buffer.byteLength(at)).toBe(107);
    const arrived = new Promise<HandedSocket>((resolve) => {
      const r = HandoverReceiver.listen(at, resolve, () => undefined);
      closers.push(() => r.close());
    });
    const [client, accepted] = await pair();
    handOver(at, accepted, {
      source: { address: '127.0.0.1', port: 1 },
      destination: { address: '127.0.0.1', port: 2 },
      counted: false,
    });
    const { socket } = await arrived;
    socket.write('220 here\r\n');
    expect(await read(client)).toBe('220 here\r\n');
    socket.destroy();

    const longer = `${at}y`;
    expect(() =>
      HandoverReceiver.listen(
        longer,
        () => undefined,
        () => undefined,
      ),
    ).toThrow(/a Unix socket path of 1 to 107 bytes/);
  });

  it('replaces a stale socket file on listen', () => {
    const at = tmpSocket();
    fs.mkdirSync(path.dirname(at), { recursive: true });
    fs.writeFileSync(at, 'left over');
    const r = HandoverReceiver.listen(
      at,
      () => undefined,
      () => undefined,
    );
    expect(fs.statSync(at).isSocket()).toBe(true);
    r.close();
    expect(fs.existsSync(at)).toBe(false);
  });
});

describe('decode', () => {
  it('takes only well-formed messages', () => {
    const ok = {
      v: 1,
      source: { address: '::1', port: 1 },
      destination: { address: '127.0.0.1', port: 25 },
      counted: false,
    };
    expect(decode(Buffer.from(JSON.stringify(ok)))).toEqual({
      source: ok.source,
      destination: ok.destination,
      counted: false,
    });
    expect(decode(Buffer.from('PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n'))).toBeUndefined();
    expect(decode(Buffer.from(JSON.stringify({ ...ok, v: 2 })))).toBeUndefined();
    expect(
      decode(Buffer.from(JSON.stringify({ ...ok, source: { address: 'evil\r\nhost', port: 1 } }))),
    ).toBeUndefined();
    expect(
      decode(Buffer.from(JSON.stringify({ ...ok, destination: { address: '127.0.0.1', port: 70000 } }))),
    ).toBeUndefined();
    expect(decode(Buffer.from(JSON.stringify({ ...ok, counted: 'yes' })))).toBeUndefined();
  });
});
