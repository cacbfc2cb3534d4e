import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ConfigError } from '@moat/config';
import { handOver } from '@moat/handover';
import { memoryLogger, silentLogger } from '@moat/log';
import { createListener, type HopHandlers, type Listener } from './listener.js';
import { reply } from './replies.js';
import { ensureTlsCertificate } from './tls.js';

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

  it('takes a recipient given twice once: no second copy, and not counted twice against the limit', async () => {
    const seen: string[][] = [];
    const asked: string[] = [];
    const l = await start(
      {
        rcptTo: (to) => void asked.push(to.address),
        data: async (body, tx) => {
          for await (const _ of body);
          seen.push(tx.rcptTo.map((r) => r.address));
          return reply(250, '2.0.0', 'Ok');
        },
      },
      { recipientLimit: 2 },
    );
    const replies = await talk(l.address.port, [
      'EHLO a.test',
      'MAIL FROM:<a@b.test>',
      'RCPT TO:<dup@example.test>',
      'RCPT TO:<dup@example.test>',
      'RCPT TO:<DUP@Example.TEST>',
      'RCPT TO:<two@example.test>',
      'RCPT TO:<dup@example.test>',
      'RCPT TO:<three@example.test>',
      'DATA',
      'Subject: x\r\n\r\nhi\r\n.',
      'QUIT',
    ]);
    expect(replies.slice(3, 9).map((r) => r.slice(0, 9))).toEqual([
      '250 2.1.5',
      '250 2.1.5',
      '250 2.1.5',
      '250 2.1.5',
      '250 2.1.5',
      '452 4.5.3',
    ]);
    expect(seen).toEqual([['dup@example.test', 'two@example.test']]);
    expect(asked).toEqual(['dup@example.test', 'two@example.test']); // the third is refused first
  });

  it('refuses a non-ASCII address without MAIL ... SMTPUTF8 with 553 5.6.7, as Postfix does', async () => {
    const l = await start();
    const replies = await talk(l.address.port, [
      'EHLO a.test',
      'MAIL FROM:<jürgen@b.test>',
      'MAIL FROM:<a@b.test>',
      'RCPT TO:<üser@example.test>',
      'RSET',
      'MAIL FROM:<jürgen@b.test> SMTPUTF8',
      'RCPT TO:<üser@example.test>',
      'QUIT',
    ]);
    const undeclared = '553 5.6.7 Must declare SMTPUTF8 to send unicode address';
    expect(replies.slice(2, 8).map((r) => (r.startsWith('250') ? r.slice(0, 3) : r))).toEqual([
      undeclared,
      '250',
      undeclared,
      '250',
      '250',
      '250',
    ]);
  });

  it('refuses a connection from outside its peers with 421 4.7.0', async () => {
    const l = await start();
    const replies = await talk(l.address.port, [], '127.0.0.3');
    expect(replies).toEqual(['421 4.7.0 Error: access denied for [127.0.0.3]: not an allowed peer']);
  });
});

describe('domains on the smtp-server engine (the public MX)', () => {
  it('passes every domain on in ASCII form as written, and refuses full stops of other scripts', async () => {
    engine = 'smtp-server';
    const asked: string[] = [];
    const l = await start({ rcptTo: (to) => void asked.push(to.address) });
    const replies = await talk(l.address.port, [
      'EHLO a.test',
      'MAIL FROM:<a@xn--bcher-kva.test>',
      'RCPT TO:<u@xn--bcher-kva.test>',
      'RCPT TO:<v@example.xn--test->',
      'RCPT TO:<w@Example.TEST>',
      'RCPT TO:<x@example。test>',
      'RCPT TO:<y@EXAMPLE．TEST>',
      'RSET',
      'MAIL FROM:<a@bücher.test> SMTPUTF8',
      'RCPT TO:<z@Bücher.test>',
      'QUIT',
    ]);
    expect(replies.slice(2, 11).map((r) => r.slice(0, 9))).toEqual([
      '250 2.1.0',
      '250 2.1.5',
      '250 2.1.5',
      '250 2.1.5',
      '501 5.1.3',
      '501 5.1.3',
      '250 2.0.0',
      '250 2.1.0',
      '250 2.1.5',
    ]);
    // smtp-server alone would have given u@bücher.test, v@example.test (punycode reads "xn--test-"
    // as "test") and accepted the other full stops as "."
    expect(asked).toEqual([
      'u@xn--bcher-kva.test',
      'v@example.xn--test-',
      'w@Example.TEST',
      'z@xn--bcher-kva.test',
    ]);
  });
});

describe.each(ENGINES)('the client limit (%s engine)', (name) => {
  it('answers a client past maxClients 421 4.3.2 and closes it; a freed slot serves the next', async () => {
    engine = name;
    const l = await start({}, { maxClients: 2 });
    const open = () =>
      new Promise<{ socket: net.Socket; first: string; closed: Promise<void> }>((resolve, reject) => {
        const socket = net.connect(l.address.port, '127.0.0.1');
        const closed = new Promise<void>((r) => socket.once('close', () => r()));
        socket.once('data', (d) => resolve({ socket, first: d.toString(), closed }));
        socket.once('error', reject);
      });
    const a = await open();
    const b = await open();
    expect([a.first, b.first]).toEqual([
      expect.stringMatching(/^220 mx\.example\.test ESMTP/),
      expect.stringMatching(/^220 mx\.example\.test ESMTP/),
    ]);
    const c = await open();
    expect(c.first).toBe('421 4.3.2 All server ports are busy\r\n');
    await c.closed; // closed by the server
    a.socket.destroy();
    await a.closed;
    // once the server has seen it go, a slot is free
    let d = await open();
    for (let i = 0; i < 40 && d.first.startsWith('421'); i++) {
      await new Promise((r) => setTimeout(r, 50));
      d = await open();
    }
    expect(d.first).toMatch(/^220 mx\.example\.test ESMTP/);
    b.socket.destroy();
    d.socket.destroy();
  });
});

describe('the error limit on the smtp-server engine (smtpd_hard_error_limit)', () => {
  it('answers the command after the limit 421 4.7.0 and ends the session; an accepted message forgives', async () => {
    engine = 'smtp-server';
    const l = await start(
      {
        rcptTo: (to) =>
          to.address.endsWith('@example.test') ? undefined : reply(554, '5.7.1', 'Relay access denied'),
      },
      { errorLimit: 3 },
    );
    const probe = await talk(l.address.port, [
      'EHLO a.test',
      'RCPT TO:<a@example.test>',
      'MAIL FROM:<a@b.test>',
      'RCPT TO:<x@elsewhere.test>',
      'RCPT TO:<y@elsewhere.test>',
      'NOOP',
      'NOOP',
    ]);
    expect(probe.slice(2)).toEqual([
      '503 5.5.1 Error: need MAIL command',
      '250 2.1.0 Accepted',
      '554 5.7.1 Relay access denied',
      '554 5.7.1 Relay access denied',
      '421 4.7.0 mx.example.test Error: too many errors',
    ]);
    const forgiven = await talk(l.address.port, [
      'EHLO a.test',
      'MAIL FROM:<a@b.test>',
      'RCPT TO:<x@elsewhere.test>',
      'RCPT TO:<y@elsewhere.test>',
      'RCPT TO:<a@example.test>',
      'DATA',
      'Subject: x\r\n\r\nhi\r\n.',
      'MAIL FROM:<a@b.test>',
      'RCPT TO:<x@elsewhere.test>',
      'RCPT TO:<y@elsewhere.test>',
      'NOOP',
      'QUIT',
    ]);
    expect(forgiven.slice(-5).map((r) => r.slice(0, 3))).toEqual(['250', '554', '554', '250', '221']);
  });
});

describe('the disconnect line on the smtp-server engine (the MX)', () => {
  it("logs one line per session in Postfix's words, with how it ended: quit, lost connection, timeout", async () => {
    engine = 'smtp-server';
    const { logger, lines } = memoryLogger();
    const l = await start({}, { logger, idleTimeoutMs: 300 });
    const disconnects = () => lines.filter((x) => x.msg.startsWith('disconnect from'));
    await talk(l.address.port, [
      'EHLO a.test',
      'MAIL FROM:<a@b.test>',
      'RCPT TO:<c@example.test>',
      'DATA',
      'Subject: x\r\n\r\nhi\r\n.',
      'QUIT',
    ]);
    // a client that leaves without QUIT, and one that says nothing after EHLO
    const client = (leave: boolean) =>
      new Promise<void>((resolve) => {
        const s = net.connect(l.address.port, '127.0.0.1');
        let seen = '';
        s.on('data', (d) => {
          seen += d.toString();
          if (/^220 /m.test(seen) && !/EHLO sent/.test(seen)) {
            seen += 'EHLO sent';
            s.write(leave ? 'EHLO a.test\r\nMAIL FROM:<a@b.test>\r\n' : 'EHLO a.test\r\n');
          }
          if (leave && /^250 2\.1\.0/m.test(seen)) s.destroy();
        });
        s.on('close', () => resolve());
      });
    await client(true);
    await client(false); // closed by the server's idle timeout
    for (let i = 0; i < 50 && disconnects().length < 3; i++) await new Promise((r) => setTimeout(r, 50));
    expect(
      disconnects()
        .map((x) => [x.msg.replace(/:\d+ /, ':PORT '), x.ended])
        .sort(),
    ).toEqual([
      ['disconnect from [127.0.0.1]:PORT ehlo=1 commands=1', 'timeout after EHLO'],
      ['disconnect from [127.0.0.1]:PORT ehlo=1 mail=1 commands=2', 'lost connection after MAIL'],
      ['disconnect from [127.0.0.1]:PORT ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5', 'quit'],
    ]);
  });
});

describe('a declared size past the limit on the smtp-server engine', () => {
  it('answers MAIL ... SIZE= 552 5.3.4 and logs it, as Postfix logs NOQUEUE: reject: MAIL', async () => {
    engine = 'smtp-server';
    const { logger, lines } = memoryLogger();
    const l = await start({}, { logger });
    const r = await talk(l.address.port, ['EHLO a.test', 'MAIL FROM:<big@remote.test> SIZE=2000000', 'QUIT']);
    expect(r[2]).toBe('552 5.3.4 Error: message exceeds fixed maximum message size 1048576');
    expect(lines.filter((x) => x.msg === 'NOQUEUE: reject: MAIL')).toEqual([
      expect.objectContaining({
        client: '127.0.0.1',
        from: 'big@remote.test',
        why: 'declared size over messageSizeLimit (1048576)',
        reply: '552 5.3.4 Error: message exceeds fixed maximum message size 1048576',
      }),
    ]);
  });
});

describe('recipients past the limit on the smtp-server engine (smtpd_recipient_overshoot_limit)', () => {
  it('answers them 452 without counting them as errors, so the message still goes to the first ones', async () => {
    engine = 'smtp-server';
    const l = await start({}, { errorLimit: 3, recipientLimit: 2 });
    const r = await talk(l.address.port, [
      'EHLO a.test',
      'MAIL FROM:<a@b.test>',
      ...Array.from({ length: 6 }, (_, i) => `RCPT TO:<u${i}@example.test>`),
      'DATA',
      'Subject: x\r\n\r\nhi\r\n.',
      'QUIT',
    ]);
    expect(r.slice(3).map((x) => x.slice(0, 9))).toEqual([
      '250 2.1.5',
      '250 2.1.5',
      '452 4.5.3',
      '452 4.5.3',
      '452 4.5.3',
      '452 4.5.3',
      '354 End d',
      '250 2.0.0',
      '221 2.0.0',
    ]);
  });
});

describe('closing the smtp-server engine with clients handed over to it', () => {
  it('answers idle sessions 421 at once, lets one in a transaction finish, and only then resolves', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moat-close-'));
    const socketPath = path.join(dir, 'h.sock');
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    engine = 'smtp-server';
    await start(
      {
        async data(body) {
          for await (const _ of body);
          await held;
          return reply(250, '2.0.0', 'Ok: done');
        },
      },
      { handover: { socketPath, clientLimit: 0 }, closeTimeoutMs: 10_000 },
    );
    // the clients reach the listener as screen's do: through another process's accept and a hand-over
    const front = net.createServer((socket) =>
      handOver(socketPath, socket, {
        source: { address: socket.remoteAddress!, port: socket.remotePort! },
        destination: { address: socket.localAddress!, port: socket.localPort! },
        counted: false,
      }),
    );
    await new Promise<void>((r) => front.listen(0, '127.0.0.1', r));
    const port = (front.address() as net.AddressInfo).port;
    const lines = (s: net.Socket) => {
      const got: string[] = [];
      let buf = '';
      s.on('data', (d) => {
        buf += d.toString();
        for (let nl; (nl = buf.indexOf('\r\n')) !== -1; buf = buf.slice(nl + 2)) got.push(buf.slice(0, nl));
      });
      return { got, ended: new Promise<void>((r) => s.on('close', () => r())) };
    };
    const until = async (cond: () => boolean) => {
      while (!cond()) await new Promise((r) => setTimeout(r, 10));
    };
    try {
      const idle = net.connect(port, '127.0.0.1');
      const busy = net.connect(port, '127.0.0.1');
      const i = lines(idle);
      const b = lines(busy);
      await until(() => i.got.length > 0 && b.got.length > 0);
      busy.write('EHLO hop.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n');
      await until(() => b.got.some((l) => l.startsWith('354')));
      busy.write('Subject: x\r\n\r\nhello\r\n.\r\n');
      await new Promise((r) => setTimeout(r, 50));
      let closed = false;
      const closing = listener!.close().then(() => (closed = true));
      await i.ended;
      expect(i.got.at(-1)).toBe('421 4.3.2 Service shutting down, closing transmission channel');
      await new Promise((r) => setTimeout(r, 100));
      expect(closed).toBe(false); // the busy session still holds it open
      release();
      await b.ended;
      expect(b.got.slice(-2)).toEqual([
        '250 2.0.0 Ok: done',
        '421 4.3.2 Service shutting down, closing transmission channel',
      ]);
      await closing;
      listener = undefined;
    } finally {
      release();
      front.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('ensureTlsCertificate', () => {
  const problemOf = async (opts: { cert: string; key: string }): Promise<string> => {
    const err = await ensureTlsCertificate({
      ...opts,
      dataDir: '/nonexistent',
      hostname: 'mx.example.test',
    }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ConfigError);
    return (err as ConfigError).problems.join('\n');
  };

  it('refuses configured files that cannot be read, or given alone, with a ConfigError naming the key and file', async () => {
    expect(await problemOf({ cert: '/nonexistent.pem', key: '/nonexistent.key' })).toMatch(
      /^tls\.cert: cannot read \/nonexistent\.pem: ENOENT/,
    );
    expect(await problemOf({ cert: '/nonexistent.pem', key: '' })).toBe(
      'tls.key: must be given together with tls.cert (/nonexistent.pem)',
    );
    expect(await problemOf({ cert: '', key: '/nonexistent.key' })).toBe(
      'tls.cert: must be given together with tls.key (/nonexistent.key)',
    );
  });

  it('reads a generated pair back as configured files, and refuses a key that is missing or not a key', async () => {
    const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'moat-tls-'));
    try {
      const made = await ensureTlsCertificate({ cert: '', key: '', dataDir, hostname: 'mx.example.test' });
      expect(made.generated).toBe(true);
      const cert = path.join(dataDir, 'tls', 'selfsigned.crt');
      const key = path.join(dataDir, 'tls', 'selfsigned.key');
      const again = await ensureTlsCertificate({ cert, key, dataDir, hostname: 'mx.example.test' });
      expect(again.key.equals(made.key)).toBe(true);
      expect(await problemOf({ cert, key: path.join(dataDir, 'missing.key') })).toMatch(
        new RegExp(`^tls\\.key: cannot read ${dataDir}/missing\\.key: ENOENT`),
      );
      expect(await problemOf({ cert, key: cert })).toMatch(
        /^tls\.cert, tls\.key: .* are not a usable pair: /,
      );
    } finally {
      fs.rmSync(dataDir, { recursive: true, force: true });
    }
  });
});

describe('what the smtp-server engine logs of its own refusals', () => {
  it('logs the session ended by the error limit: client, errors and the 421, once', async () => {
    engine = 'smtp-server';
    const { logger, lines } = memoryLogger();
    const l = await start({ rcptTo: () => reply(550, '5.1.1', 'User unknown') }, { errorLimit: 2, logger });
    const r = await talk(l.address.port, [
      'EHLO a.test',
      'MAIL FROM:<a@b.test>',
      'RCPT TO:<x@example.test>',
      'RCPT TO:<y@example.test>',
      'RCPT TO:<z@example.test>',
    ]);
    expect(r.at(-1)).toBe('421 4.7.0 mx.example.test Error: too many errors');
    const limit = lines.filter((x) => /too many errors/.test(x.msg));
    expect(limit).toHaveLength(1);
    expect(limit[0]).toMatchObject({
      level: 'info',
      client: '127.0.0.1',
      errors: 2,
      reply: '421 4.7.0 mx.example.test Error: too many errors',
    });
    expect(limit[0]!.msg).toMatch(/^too many errors after RCPT from \[127\.0\.0\.1\]:\d+$/);
  });
});

describe('recipients past the limit are logged (smtp-server engine)', () => {
  it('logs each recipient refused 452 with the transaction id, client, sender and reply', async () => {
    engine = 'smtp-server';
    const { logger, lines } = memoryLogger();
    const l = await start({}, { recipientLimit: 1, logger });
    const r = await talk(l.address.port, [
      'EHLO a.test',
      'MAIL FROM:<a@b.test>',
      'RCPT TO:<u0@example.test>',
      'RCPT TO:<u1@example.test>',
      'QUIT',
    ]);
    expect(r[4]).toBe('452 4.5.3 Error: too many recipients');
    const refused = lines.filter((x) => x.msg === 'NOQUEUE: reject: RCPT');
    expect(refused).toHaveLength(1);
    expect(refused[0]).toMatchObject({
      level: 'info',
      client: '127.0.0.1',
      from: 'a@b.test',
      to: 'u1@example.test',
      reply: '452 4.5.3 Error: too many recipients',
    });
    expect(refused[0]!.id).toMatch(/^\w+$/);
  });
});
