import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  appendZone,
  clamdPing,
  clamdScan,
  dnsResolver,
  eicar,
  freePort,
  isAlive,
  redisPing,
  spamdCheck,
  spamdPing,
  startClamd,
  startRbldnsd,
  startRedis,
  startSpamd,
  writeZone,
} from './index.js';

const GTUBE = 'XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X';

function message(body: string): string {
  return [
    'From: a@example.com',
    'To: b@example.com',
    'Subject: test',
    'Date: Mon, 1 Jan 2024 00:00:00 +0000',
    'Message-ID: <1@example.com>',
    '',
    body,
    '',
  ].join('\r\n');
}

let stateDir: string;
beforeAll(() => {
  stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'moat-daemons-'));
});
afterAll(() => {
  fs.rmSync(stateDir, { recursive: true, force: true });
});

describe('real daemons', { timeout: 30_000 }, () => {
  it('clamd finds EICAR over TCP, passes clean data, answers on its unix socket, and stops', async () => {
    const clamd = await startClamd({ stateDir });
    try {
      expect(clamd.address).toBe(`127.0.0.1:${clamd.port}`);
      expect(await clamdScan(clamd.port, eicar())).toMatch(/^stream: .*eicar.* FOUND$/i);
      expect(await clamdScan(clamd.port, 'hello, world\n')).toBe('stream: OK');
      expect(await clamdPing(clamd.socket)).toBe('PONG');
      const attachment = Buffer.from(eicar()).toString('base64');
      const mime = [
        'From: a@example.com',
        'Subject: attached',
        'MIME-Version: 1.0',
        'Content-Type: multipart/mixed; boundary="b"',
        '',
        '--b',
        'Content-Type: text/plain',
        '',
        'see attachment',
        '--b',
        'Content-Type: application/octet-stream; name="x.com"',
        'Content-Transfer-Encoding: base64',
        '',
        attachment,
        '--b--',
        '',
      ].join('\r\n');
      expect(await clamdScan(clamd.socket, mime)).toMatch(/eicar/i);
    } finally {
      await clamd.stop();
    }
    expect(isAlive(clamd.pid)).toBe(false);
  });

  it('spamd says PONG, flags GTUBE as spam and a plain message as ham, and stops', async () => {
    const spamd = await startSpamd({ stateDir, children: 1 });
    try {
      expect(await spamdPing(spamd.port)).toBe('SPAMD/1.5 0 PONG');
      const spam = await spamdCheck(spamd.port, message(`This is spam.\r\n${GTUBE}`));
      expect(spam.spam).toBe(true);
      expect(spam.reply).toMatch(/^Spam: True ; /m);
      expect(spam.score).toBeGreaterThanOrEqual(1000);
      const ham = await spamdCheck(spamd.port, message('Hello Bob, lunch on Friday?'));
      expect(ham.spam).toBe(false);
    } finally {
      await spamd.stop();
    }
    expect(isAlive(spamd.pid)).toBe(false);
  });

  it('redis answers PING on the port it was given, and stops', async () => {
    const port = await freePort();
    const redis = await startRedis({ stateDir, port });
    try {
      expect(redis.address).toBe(`redis://127.0.0.1:${port}`);
      expect(await redisPing(port)).toBe('+PONG');
    } finally {
      await redis.stop();
    }
    expect(isAlive(redis.pid)).toBe(false);
  });

  it('fails fast, with the log, when the port is taken', async () => {
    const blocker = net.createServer();
    await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', r));
    const { port } = blocker.address() as net.AddressInfo;
    try {
      await expect(startRedis({ stateDir, port })).rejects.toThrow(
        /redis exited with code \d+ before answering/,
      );
    } finally {
      blocker.close();
    }
  });

  it('rbldnsd answers, and serves an address added to a zone while it runs', async () => {
    const dns = await startRbldnsd({
      stateDir,
      zones: [
        { name: 'zen.test', type: 'ip4set', file: 'zen4.zone' },
        { name: 'dbl.test', type: 'dnset', file: 'dbl.zone' },
      ],
    });
    try {
      const resolver = dnsResolver(dns.address);
      await expect(resolver.resolve4('2.0.0.127.zen.test')).rejects.toMatchObject({ code: 'ENOTFOUND' });
      appendZone(dns.dir, 'zen4.zone', ['127.0.0.2 :2:listed $']);
      writeZone(dns.dir, 'dbl.zone', ['bad.example :2:domain listed']);
      const until = Date.now() + 5000;
      let answer: string[] = [];
      while (Date.now() < until) {
        answer = await resolver.resolve4('2.0.0.127.zen.test').catch(() => []);
        if (answer.length > 0) break;
        await new Promise((r) => setTimeout(r, 100));
      }
      expect(answer).toEqual(['127.0.0.2']);
      expect((await resolver.resolveTxt('2.0.0.127.zen.test')).flat()).toEqual(['listed 127.0.0.2']);
      await expect(resolver.resolve4('1.0.0.127.zen.test')).rejects.toMatchObject({ code: 'ENOTFOUND' });
      expect(await resolver.resolve4('bad.example.dbl.test')).toEqual(['127.0.0.2']);
    } finally {
      await dns.stop();
    }
    expect(isAlive(dns.pid)).toBe(false);
  });
});
