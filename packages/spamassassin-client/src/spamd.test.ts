/**
 * SpamdClient against a real spamd (SpamAssassin 4, started once for this file with @moat/daemons):
 * every command, a streamed 200 KB body, User:, TELL refused, truncation, and the same scores as
 * spamc. A second spamd on a unix socket with --allow-tell (startSpamd listens on TCP only) shows
 * the socket transport and what TELL answers with Bayes off.
 */
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSpamd, stopPid, type DaemonHandle } from '@moat/daemons';
import { tmpDir, waitFor, which } from '@moat/testkit';
import { SpamdClient, SpamdError } from './index.js';

const GTUBE_STRING = 'XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X';

function mail(subject: string, body: string, id: string): Buffer {
  return Buffer.from(
    [
      'From: Alice <alice@example.org>',
      'To: Bob <bob@example.net>',
      `Subject: ${subject}`,
      `Message-ID: <${id}@example.org>`,
      'Date: Tue, 25 Nov 2025 12:00:00 +0000',
      'MIME-Version: 1.0',
      'Content-Type: text/plain; charset=us-ascii',
      '',
      body,
      '',
    ].join('\r\n'),
  );
}

const GTUBE = mail('test message', `Hello Bob,\r\n\r\n${GTUBE_STRING}\r\n`, 'gtube-1');
const HAM = mail(
  'lunch tomorrow',
  'Hi Bob,\r\n\r\nlunch tomorrow at noon at the usual place?\r\n\r\nAlice',
  'ham-1',
);

let spamd: DaemonHandle;
let stateDir: string;
let client: SpamdClient;

/** The unix-socket spamd with --allow-tell: its pid and socket path. */
let tellSpamd: { pid: number; socketPath: string } | undefined;

/** spamd on a unix socket, allowing TELL, on the site config startSpamd wrote. */
async function startSocketSpamd(dir: string): Promise<{ pid: number; socketPath: string }> {
  const socketPath = path.join(dir, 'spamd-tell.sock');
  const root = process.getuid?.() === 0;
  const user = root
    ? /^debian-spamd:/m.test(fs.readFileSync('/etc/passwd', 'utf8'))
      ? 'debian-spamd'
      : 'nobody'
    : undefined;
  const args = [
    '-x',
    '-L',
    ...(user ? ['-u', user, '-g', user] : []),
    `--listen=${socketPath}`,
    '--allow-tell',
    `--siteconfigpath=${path.join(dir, 'spamd-site')}`,
    '-H',
    path.join(dir, 'spamd-home'),
    '-s',
    path.join(dir, 'spamd-tell.log'),
    '--max-children=1',
    '--min-children=1',
  ];
  const out = fs.openSync(path.join(dir, 'spamd-tell.out'), 'a');
  const child = spawn(which('spamd') ?? '/usr/sbin/spamd', args, {
    detached: true,
    stdio: ['ignore', out, out],
  });
  fs.closeSync(out);
  const pid = await new Promise<number>((resolve, reject) => {
    child.once('spawn', () => resolve(child.pid!));
    child.once('error', reject);
  });
  const probe = new SpamdClient(socketPath, { timeoutMs: 1000 });
  await waitFor(
    async () => (await probe.ping().catch(() => undefined)) !== undefined || undefined,
    30_000,
    'spamd on a unix socket',
  );
  return { pid, socketPath };
}

beforeAll(async () => {
  stateDir = tmpDir('spamd-client-real-');
  fs.chmodSync(stateDir, 0o755);
  spamd = await startSpamd({ stateDir });
  client = new SpamdClient(spamd.address, { timeoutMs: 15_000 });
  try {
    tellSpamd = await startSocketSpamd(stateDir);
  } catch (err) {
    console.warn(`no unix-socket spamd: ${String(err)}`);
  }
}, 60_000);

afterAll(async () => {
  await Promise.all([spamd?.stop(), tellSpamd ? stopPid(tellSpamd.pid) : undefined]);
  fs.rmSync(stateDir, { recursive: true, force: true });
}, 20_000);

describe('a real spamd over TCP', () => {
  it('PING answers PONG', async () => {
    expect(await client.ping()).toMatchObject({ version: '1.5', raw: { code: 0, message: 'PONG' } });
  });

  it('CHECK: GTUBE is spam with a score of at least 1000', async () => {
    const r = await client.check(GTUBE);
    expect(r).toMatchObject({ isSpam: true, threshold: 5, truncated: false });
    expect(r.score).toBeGreaterThanOrEqual(1000);
    expect(r.raw).toMatchObject({ version: '1.1', code: 0, codeName: 'EX_OK' });
  });

  it('CHECK: a plain message is not spam', async () => {
    const r = await client.check(HAM);
    expect(r.isSpam).toBe(false);
    expect(r.score).toBeLessThan(r.threshold);
  });

  it('SYMBOLS lists GTUBE', async () => {
    const r = await client.symbols(GTUBE);
    expect(r.isSpam).toBe(true);
    expect(r.symbols).toContain('GTUBE');
  });

  it('REPORT has the report text; REPORT_IFSPAM only for spam', async () => {
    const r = await client.report(GTUBE);
    expect(r.report).toMatch(/Content analysis details:\s+\(1000\.0 points, 5\.0 required\)/);
    expect(r.report).toMatch(/GTUBE/);
    const spam = await client.reportIfSpam(GTUBE);
    expect(spam.isSpam).toBe(true);
    expect(spam.report).toMatch(/GTUBE/);
    const ham = await client.reportIfSpam(HAM);
    expect(ham.isSpam).toBe(false);
    expect(ham.report).toBe(undefined);
  });

  it('HEADERS returns the rewritten header block with X-Spam-*', async () => {
    const r = await client.headers(GTUBE);
    expect(r.headers).toMatch(/^X-Spam-Flag: YES\r$/m);
    expect(r.headers).toMatch(/^X-Spam-Status: Yes, score=1000\.0 required=5\.0 tests=.*GTUBE/ms);
    expect(r.headers).toMatch(/^Subject: test message\r$/m);
    expect(r.headers).not.toContain(GTUBE_STRING);
  });

  it('PROCESS returns the whole rewritten message', async () => {
    const r = await client.process(GTUBE);
    const text = r.message.toString('latin1');
    expect(text).toMatch(/^X-Spam-Flag: YES\r$/m);
    expect(text).toContain('Subject: test message');
    expect(text.endsWith(`${GTUBE_STRING}\r\n\r\n`)).toBe(true);
    expect(r.message.length).toBe(Number(r.raw.headers['content-length']));
  });

  it('streams a 200 KB body of many chunks, every byte arriving (PROCESS hands it back)', async () => {
    const lines: string[] = [];
    for (let i = 0; lines.join('\r\n').length < 200 * 1024; i++) {
      lines.push(`line ${i} of a long and boring status report about nothing in particular`);
    }
    const whole = mail('status report', lines.join('\r\n'), 'big-1');
    const parts: Buffer[] = [];
    for (let at = 0; at < whole.length; at += 1000) parts.push(whole.subarray(at, at + 1000));
    expect(parts.length).toBeGreaterThan(200);
    const r = await client.process({ stream: Readable.from(parts), length: whole.length });
    expect(r.isSpam).toBe(false);
    const bodyAt = whole.indexOf('\r\n\r\n');
    expect(r.message.subarray(r.message.indexOf('\r\n\r\n')).equals(whole.subarray(bodyAt))).toBe(true);
  }, 20_000);

  it('sends User: (spamd logs whose preferences it used)', async () => {
    await client.check(HAM, { user: 'moat-test-user' });
    const log = path.join(stateDir, 'spamd.log');
    await waitFor(
      () => fs.readFileSync(log, 'utf8').includes('for moat-test-user:') || undefined,
      5000,
      'User in spamd.log',
    );
  });

  it('TELL without --allow-tell: SpamdError kind server, 69 EX_UNAVAILABLE', async () => {
    const err = await client.tell(GTUBE, { messageClass: 'spam', set: ['local'] }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(SpamdError);
    expect(err).toMatchObject({ kind: 'server', code: 69, codeName: 'EX_UNAVAILABLE', command: 'TELL' });
    expect((err as SpamdError).message).toMatch(/--allow-tell/);
  });

  it('truncation to maxSize gives spamd a consistent request (the first maxSize bytes are scanned)', async () => {
    const long = mail('long', `${GTUBE_STRING}\r\n${'padding padding padding\r\n'.repeat(2000)}`, 'long-1');
    const r = await new SpamdClient(spamd.address, { maxSize: 2000, truncate: true }).check(long);
    expect(r).toMatchObject({ truncated: true, isSpam: true });
    const refused = await new SpamdClient(spamd.address, { maxSize: 2000 })
      .check(long)
      .catch((e: unknown) => e);
    expect(refused).toMatchObject({ kind: 'too-large' });
  });

  it.skipIf(!which('spamc'))(
    'scores exactly as spamc -c and spamc -R do',
    async () => {
      for (const message of [GTUBE, HAM]) {
        const ours = await client.check(message);
        const args = ['-d', '127.0.0.1', '-p', String(spamd.port)];
        const c = spawnSync('spamc', [...args, '-c'], {
          input: message,
          encoding: 'latin1',
          timeout: 15_000,
        });
        expect(c.stdout.trim()).toMatch(/^-?\d+\.\d\/\d+\.\d$/);
        const [score, threshold] = c.stdout.trim().split('/').map(Number);
        expect([score, threshold]).toEqual([ours.score, ours.threshold]);
        expect(c.status).toBe(ours.isSpam ? 1 : 0);
        const report = spawnSync('spamc', [...args, '-R'], {
          input: message,
          encoding: 'latin1',
          timeout: 15_000,
        });
        expect(report.stdout.split('\n')[0]).toBe(c.stdout.trim());
      }
    },
    20_000,
  );
});

describe('a real spamd on a unix socket, with --allow-tell', () => {
  it('answers CHECK over the socket', async (ctx) => {
    if (!tellSpamd) return ctx.skip();
    const r = await new SpamdClient(tellSpamd.socketPath).check(GTUBE);
    expect(r).toMatchObject({ isSpam: true, score: 1000 });
  });

  it('TELL with Bayes off: EX_OK, and spamd says it did nothing (no DidSet)', async (ctx) => {
    if (!tellSpamd) return ctx.skip();
    const s = new SpamdClient(`unix:${tellSpamd.socketPath}`);
    const learn = await s.tell(GTUBE, { messageClass: 'spam', set: ['local'] });
    expect(learn).toMatchObject({ didSet: [], didRemove: [], raw: { code: 0, codeName: 'EX_OK' } });
    const forget = await s.tell(GTUBE, { remove: ['local'] });
    expect(forget.didRemove).toEqual([]);
  });
});
