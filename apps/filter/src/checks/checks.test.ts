import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { eicar, startClamd, type ClamdHandle } from '@moat/daemons';
import { schema } from '@moat/config';
import { walkMime } from '../mime.js';
import { zip } from '@moat/testkit';
import { headerProblems } from './badHeaders.js';
import { bannedCheck, evaluateBanned, parseBannedRules } from './banned.js';
import { parseReportTests } from './spam.js';
import { classifyClamd, parseClamd, virusCheck } from './virus.js';

const input = (data: Buffer | string) => {
  const buf = Buffer.isBuffer(data) ? data : Buffer.from(data, 'latin1');
  return { size: buf.length, stream: () => Readable.from([buf]) };
};

describe('virus: clamd replies, classified so that only OK is clean', () => {
  it('classifies OK, FOUND, limits, encrypted archives and errors', () => {
    expect(classifyClamd('stream: OK')).toEqual({ kind: 'clean' });
    expect(classifyClamd('stream: Eicar-Test-Signature.UNOFFICIAL FOUND')).toEqual({
      kind: 'virus',
      names: ['Eicar-Test-Signature.UNOFFICIAL'],
    });
    expect(classifyClamd('stream: Heuristics.Limits.Exceeded.MaxFileSize FOUND').kind).toBe('limit');
    expect(classifyClamd('INSTREAM size limit exceeded. ERROR').kind).toBe('limit');
    expect(classifyClamd('stream: Heuristics.Encrypted.Zip FOUND').kind).toBe('encrypted');
    expect(classifyClamd('COMMAND READ TIMED OUT').kind).toBe('error');
    expect(classifyClamd('').kind).toBe('error');
  });

  it('a refused connection is an error, never clean', async () => {
    const r = await virusCheck(input('x'), {
      clamd: parseClamd('127.0.0.1:1'),
      timeoutMs: 2000,
      encryptedArchives: 'unchecked',
    });
    expect(r.outcome).toBe('error');
    expect(r.detail).toMatch(/^clamd: /);
  });

  it('a clamd that never answers times out as an error within clamdTimeout', async () => {
    const silent = net.createServer((s) => s.resume());
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    const port = (silent.address() as net.AddressInfo).port;
    const r = await virusCheck(input('x'.repeat(1000)), {
      clamd: { host: '127.0.0.1', port },
      timeoutMs: 300,
      encryptedArchives: 'unchecked',
    });
    silent.close();
    expect(r).toMatchObject({ outcome: 'error', detail: 'clamd: no verdict within 300 ms' });
    expect(r.ms).toBeLessThan(1500);
  });

  it.each([
    [
      'before the message was sent',
      // answers at once and reads no more: the rest of the 8 MB cannot be sent before the reply comes
      (s: net.Socket) => s.once('data', () => (s.pause(), s.write('1: stream: OK\0'))),
    ],
    [
      "with another scan's id",
      (s: net.Socket) =>
        s.on('data', (d) => d.includes(Buffer.from([0, 0, 0, 0])) && s.write('7: stream: OK\0')),
    ],
  ])('an OK %s is an error, never clean', async (_, behave) => {
    const fake = net.createServer((s) => behave(s));
    await new Promise<void>((r) => fake.listen(0, '127.0.0.1', r));
    const port = (fake.address() as net.AddressInfo).port;
    const r = await virusCheck(input('z'.repeat(8_000_000)), {
      clamd: { host: '127.0.0.1', port },
      timeoutMs: 3000,
      encryptedArchives: 'unchecked',
    });
    fake.close();
    expect(r.outcome).toBe('error');
    expect(r.detail).toMatch(/^clamd: a reply that is not this scan's verdict: \d+: stream: OK/);
  });

  it('a limit reply from clamd is an error (unchecked), not a pass', async () => {
    const limited = net.createServer((s) =>
      s.once('data', () => s.end('INSTREAM size limit exceeded. ERROR\0')),
    );
    await new Promise<void>((r) => limited.listen(0, '127.0.0.1', r));
    const port = (limited.address() as net.AddressInfo).port;
    const r = await virusCheck(input('y'.repeat(300_000)), {
      clamd: { host: '127.0.0.1', port },
      timeoutMs: 3000,
      encryptedArchives: 'unchecked',
    });
    limited.close();
    expect(r).toMatchObject({ outcome: 'error', detail: 'limit exceeded: INSTREAM size limit exceeded' });
  });

  describe('with the real clamd', () => {
    let clamd: ClamdHandle | undefined;
    let target: string;
    let socket: string;
    beforeAll(async () => {
      if (process.env.MOAT_TEST_CLAMD && process.env.MOAT_TEST_CLAMD_SOCKET) {
        target = process.env.MOAT_TEST_CLAMD;
        socket = process.env.MOAT_TEST_CLAMD_SOCKET;
      } else {
        clamd = await startClamd({ stateDir: path.join(os.tmpdir(), `moat-filter-unit-${process.pid}`) });
        target = clamd.address;
        socket = clamd.socket;
      }
    }, 30_000);
    afterAll(async () => clamd?.stop());

    it('finds EICAR over TCP and over the unix socket, and passes a clean message', async () => {
      const deps = (a: string) => ({
        clamd: parseClamd(a),
        timeoutMs: 10_000,
        encryptedArchives: 'unchecked' as const,
      });
      for (const a of [target, socket]) {
        const bad = await virusCheck(input(`Subject: x\r\n\r\n${eicar()}\r\n`), deps(a));
        expect(bad.outcome).toBe('fail');
        expect(bad.detail).toMatch(/^INFECTED: Eicar-Test-Signature/);
        expect((await virusCheck(input('Subject: x\r\n\r\nhello\r\n'), deps(a))).outcome).toBe('pass');
      }
    });
  });
});

describe('banned files and the MIME walk', () => {
  const rules = parseBannedRules(schema.parse({}).filter.bannedFiles);
  const mail = (name: string, type: string, content: Buffer) =>
    `From: a@b.test\r\nDate: x\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b\r\n` +
    `Content-Type: ${type}; name="${name}"\r\nContent-Disposition: attachment; filename="${name}"\r\nContent-Transfer-Encoding: base64\r\n\r\n` +
    `${content.toString('base64').replace(/.{76}/g, '$&\r\n')}\r\n--b--\r\n`;
  const walk = (
    raw: string,
    o: Partial<{
      archiveMaxDepth: number;
      archiveMaxSize: number;
      archiveMaxFiles: number;
      archiveMaxExpansion: number;
    }> = {},
  ) =>
    walkMime(Readable.from([Buffer.from(raw, 'latin1')]), {
      archiveMaxDepth: 4,
      archiveMaxSize: 1 << 20,
      archiveMaxFiles: 100,
      ...o,
    });

  // a zip whose n central-directory entries all point at one stored copy of `data` (overlapping
  // entries, as in Fifield's zip bombs)
  const overlapping = (n: number, suffix: string, data: Buffer) => {
    const one = zip([{ name: `0${suffix}`, data }]);
    const cdAt = one.readUInt32LE(one.length - 6);
    const central = one.subarray(cdAt, one.length - 22);
    const entries = Array.from({ length: n }, (_, i) => {
      const c = Buffer.from(central.subarray(0, 46));
      const name = Buffer.from(`${i}${suffix}`);
      c.writeUInt16LE(name.length, 28);
      return Buffer.concat([c, name]);
    });
    const cd = Buffer.concat(entries);
    const end = Buffer.from(one.subarray(one.length - 22));
    end.writeUInt16LE(n, 8);
    end.writeUInt16LE(n, 10);
    end.writeUInt32LE(cd.length, 12);
    end.writeUInt32LE(cdAt, 16);
    return Buffer.concat([one.subarray(0, cdAt), cd, end]);
  };

  it("matches amavis' sample rules: double extensions, .pif/.scr, executables by magic bytes, MIME types", () => {
    const judge = (name: string) =>
      evaluateBanned({ parts: [{ chain: [{ name }] }], mimeErrors: [], notes: [] }, rules).banned;
    expect(judge('invoice.pdf.exe')).toEqual(['invoice.pdf.exe']);
    expect(judge('photo.jpg.scr')).toHaveLength(1);
    expect(judge('setup.exe')).toHaveLength(1);
    expect(judge('report.pdf')).toEqual([]);
    expect(judge('exe')).toEqual([]);
    const typed = evaluateBanned(
      { parts: [{ chain: [{ type: 'application/x-msdownload' }] }], mimeErrors: [], notes: [] },
      rules,
    );
    expect(typed.banned).toHaveLength(1);
    const magic = evaluateBanned(
      { parts: [{ chain: [{ name: 'harmless.txt', detected: '.exe-ms' }] }], mimeErrors: [], notes: [] },
      rules,
    );
    expect(magic.banned).toEqual(['harmless.txt']);
  });

  it('honours an allow rule for what sits inside a tar', () => {
    const inTar = evaluateBanned(
      {
        parts: [{ chain: [{ name: 'a.tar', detected: '.tar' }, { name: 'tool.exe' }] }],
        mimeErrors: [],
        notes: [],
      },
      rules,
    );
    expect(inTar.banned).toEqual([]);
  });

  it('finds a renamed executable by its magic bytes, and .pdf.exe inside a zip inside a zip', async () => {
    const exe = Buffer.concat([Buffer.from('MZ'), Buffer.alloc(1000, 0x90)]);
    const renamed = evaluateBanned(await walk(mail('notes.txt', 'text/plain', exe)), rules);
    expect(renamed.banned).toEqual(['notes.txt']);
    const inner = zip([{ name: 'invoice.pdf.exe', data: Buffer.from('x') }]);
    const outer = zip([
      { name: 'inner.zip', data: inner },
      { name: 'ok.txt', data: Buffer.from('fine') },
    ]);
    const r = evaluateBanned(await walk(mail('outer.zip', 'application/zip', outer)), rules);
    expect(r.banned).toEqual(['outer.zip/inner.zip/invoice.pdf.exe']);
  });

  it('stops at archiveMaxDepth and archiveMaxSize, and says so', async () => {
    const inner = zip([{ name: 'invoice.pdf.exe', data: Buffer.from('x') }]);
    const outer = zip([{ name: 'inner.zip', data: inner }]);
    const shallow = await walk(mail('outer.zip', 'application/zip', outer), { archiveMaxDepth: 1 });
    expect(evaluateBanned(shallow, rules).banned).toEqual([]);
    expect(shallow.notes.join()).toMatch(/deeper than archiveMaxDepth/);
    const big = zip([{ name: 'a.pdf.exe', data: Buffer.alloc(5000) }]);
    const small = await walk(mail('big.zip', 'application/zip', big), { archiveMaxSize: 1000 });
    expect(evaluateBanned(small, rules).banned).toEqual([]);
    expect(small.notes.join()).toMatch(/larger than archiveMaxSize/);
  });

  it('lists no more than archiveMaxFiles entries', async () => {
    const many = zip(Array.from({ length: 20 }, (_, i) => ({ name: `f${i}.txt`, data: Buffer.from('x') })));
    const r = await walk(mail('many.zip', 'application/zip', many), { archiveMaxFiles: 5 });
    expect(r.parts.filter((p) => p.chain.length === 2)).toHaveLength(5);
    expect(r.notes.join()).toMatch(/more than archiveMaxFiles/);
  });

  it('lists no more than archiveMaxFiles entries in the whole message, nested archives together', async () => {
    // overlapping entries: a few kilobytes, nested four deep, are n^4 entries
    let bomb = overlapping(30, '.txt', Buffer.from('hello'));
    for (let level = 0; level < 3; level++) bomb = overlapping(30, '.zip', bomb);
    expect(bomb.length).toBeLessThan(10_000);
    const started = performance.now();
    const r = await walk(mail('bomb.zip', 'application/zip', bomb), { archiveMaxFiles: 100 });
    expect(performance.now() - started).toBeLessThan(2000);
    // the message's own parts (text, bomb.zip) and at most archiveMaxFiles archive entries
    expect(r.parts.filter((p) => p.chain.length > 1).length).toBeLessThanOrEqual(100);
    expect(r.notes.join()).toMatch(/more than archiveMaxFiles \(100\) archive entries in the message/);
  });

  it('decompresses no more than archiveMaxExpansion bytes in the whole message', async () => {
    // 50 entries that are all one stored 200 KB zip: 10 MB to decompress from a message of 200 KB
    const big = zip([{ name: 'big.txt', data: Buffer.alloc(200_000, 0x61) }]);
    const bomb = overlapping(50, '.zip', big);
    expect(bomb.length).toBeLessThan(210_000);
    const r = await walk(mail('bomb.zip', 'application/zip', bomb), {
      archiveMaxFiles: 1000,
      archiveMaxExpansion: 1_000_000,
    });
    expect(r.notes.join()).toMatch(
      /more than archiveMaxExpansion \(1000000 bytes\) decompressed in the message, rest not listed/,
    );
    // each entry read costs about 400 KB (the zip, then its text): a few, not 50
    expect(r.parts.filter((p) => p.chain.length === 2).length).toBeLessThan(6);
  });

  it('is unchecked, not clean, when the MIME walk stops before the end (more than 1000 parts)', async () => {
    // mailsplit stops at 1000 parts; what follows (here an executable) is never seen by the walk
    const exe = Buffer.concat([Buffer.from('MZ'), Buffer.alloc(200, 0x90)]);
    const filler = Array.from({ length: 1001 }, () => '--b\r\nContent-Type: text/plain\r\n\r\nx\r\n').join(
      '',
    );
    const raw =
      'From: a@b.test\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n' +
      filler +
      '--b\r\nContent-Type: application/octet-stream; name="invoice.pdf.exe"\r\nContent-Transfer-Encoding: base64\r\n\r\n' +
      `${exe.toString('base64')}\r\n--b--\r\n`;
    const r = await bannedCheck(walk(raw), rules);
    expect(r.outcome).toBe('error');
    expect(r.detail).toMatch(/^MIME structure not read to the end: .*child nodes/i);
    // a ban found before the walk stopped is still a ban
    const early = raw.replace(
      '--b\r\n',
      `--b\r\nContent-Type: application/octet-stream; name="setup.exe"\r\n\r\nMZ\r\n--b\r\n`,
    );
    expect((await bannedCheck(walk(early), rules)).outcome).toBe('fail');
  });

  it('never throws on malformed MIME; reports MIME errors', async () => {
    const r = await walk('Content-Type: multipart/mixed\r\nContent-Transfer-Encoding: x-weird\r\n\r\n--\r\n');
    expect(r.mimeErrors).toEqual([
      'MIME error: multipart/mixed without a boundary',
      'MIME error: unknown Content-Transfer-Encoding "x-weird"',
    ]);
    const junk = zip([{ name: 'a', data: Buffer.from('b') }]).subarray(0, 40);
    const broken = await walk(mail('broken.zip', 'application/zip', junk));
    expect(broken.parts.some((p) => p.chain.some((a) => a.undecipherable))).toBe(true);
  });
});

describe("bad headers: amavis' categories", () => {
  const h = (s: string) => headerProblems(Buffer.from(s, 'latin1'), true).map((p) => [p.minor, p.text]);
  it('reports each minor category', () => {
    const ok = 'From: a@b.test\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\nSubject: hi\r\n';
    expect(h(ok)).toEqual([]);
    expect(h('From: a@b.test\r\nSubject: caf\xe9\r\n')).toEqual([
      [2, "Non-encoded 8-bit data (char E9 hex) in message header 'Subject'"],
      [7, 'Missing required header field: "Date"'],
    ]);
    expect(h(ok + 'X-A: a\x00b\r\n')).toEqual([
      [3, "Improper use of control character (char 00 hex) in message header 'X-A'"],
    ]);
    expect(h(ok + 'X-B: a\r\n   \r\n')).toEqual([[4, 'Header field occupying only whitespace: X-B']]);
    expect(h(ok + `X-C: ${'a'.repeat(1000)}\r\n`)[0]![0]).toBe(5);
    expect(h(ok + 'not a header\r\n')).toEqual([[6, 'Header field syntax error: "not a header"']]);
    expect(h(ok + 'MIME-Version: 1.0\r\nMIME-Version: 1.0\r\n')).toEqual([
      [8, 'Duplicate header field: "MIME-Version"'],
    ]);
  });
});

describe('spam: the report table', () => {
  it('parses rules, scores and wrapped descriptions', () => {
    const report = [
      'Spam detection software, running on the system "mx", has',
      'identified this incoming email as possible spam.',
      '',
      'Content analysis details:   (1000.0 points, 5.0 required)',
      '',
      ' pts rule name              description',
      '---- ---------------------- --------------------------------------------------',
      '1000 GTUBE                  BODY: Generic Test for Unsolicited Bulk Email',
      '-1.0 ALL_TRUSTED            Passed through trusted hosts only via SMTP',
      ' 0.0 TVD_SPACE_RATIO        No description available.',
      '                            continued',
      '',
    ].join('\n');
    expect(parseReportTests(report)).toEqual([
      { name: 'GTUBE', score: 1000, description: 'BODY: Generic Test for Unsolicited Bulk Email' },
      { name: 'ALL_TRUSTED', score: -1, description: 'Passed through trusted hosts only via SMTP' },
      { name: 'TVD_SPACE_RATIO', score: 0, description: 'No description available. continued' },
    ]);
  });
});
