import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, describe, expect, it } from 'vitest';
import { silentLogger } from '@moat/log';
import { DurableWriter, writeEnvelopeFile } from '@moat/spool';
import { filesUnder, maildirMessages, tmpDir, waitFor } from '@moat/testkit';
import { Queue, type QueueHead } from './queue.js';

const client = { address: '192.0.2.1', port: 25, name: 'unknown', helo: 'x', proto: 'ESMTP' };
const writer = new DurableWriter();
afterAll(() => writer.close());

function queue(dir: string, runDelayMs = 60_000): Queue {
  return new Queue({
    dir: path.join(dir, 'queue'),
    maildir: path.join(dir, 'mail'),
    domains: ['example.test'],
    hostname: 'mx.example.test',
    runDelayMs,
    logger: silentLogger(),
    write: (d, name, parts, opts) => writer.write(d, name, parts, opts),
  });
}

const head = (id: string, rcpt: string[]): QueueHead => ({
  v: 1,
  id,
  from: 'a@remote.test',
  rcpt,
  client,
  arrived: Date.now(),
});
const body = () => [Buffer.from('Received: x\r\n'), Readable.from([Buffer.from('Subject: s\r\n\r\nhi\r\n')])];

describe('the delivery queue', () => {
  it('delivers what a crash left in active/, in both forms, and empties the queue', async () => {
    const dir = tmpDir('moat-queue-');
    const active = path.join(dir, 'queue', 'active');
    fs.mkdirSync(active, { recursive: true });
    // one local recipient: Maildir form
    fs.writeFileSync(
      path.join(active, 'AAA.md'),
      'Return-Path: <a@remote.test>\r\nDelivered-To: one@example.test\r\nSubject: one\r\n\r\nx\r\n',
    );
    // several recipients, one of them elsewhere: envelope form
    await writeEnvelopeFile(
      active,
      {
        v: 1,
        id: 'BBB',
        from: 'b@remote.test',
        rcpt: ['two@example.test', 'x@elsewhere.test'],
        client,
        arrived: 0,
      },
      [Buffer.from('Subject: two\r\n\r\ny\r\n')],
    );
    fs.writeFileSync(path.join(active, '.half-written.tmp'), 'partial');
    const q = queue(dir);
    await q.init();
    await waitFor(() => filesUnder(active).length === 0 || undefined, 3000, 'the active queue to empty');
    await q.drain();
    const [one] = maildirMessages(path.join(dir, 'mail'), 'one@example.test');
    expect(one?.text).toBe(
      'Return-Path: <a@remote.test>\r\nDelivered-To: one@example.test\r\nSubject: one\r\n\r\nx\r\n',
    );
    const [two] = maildirMessages(path.join(dir, 'mail'), 'two@example.test');
    expect(two?.text).toBe(
      'Return-Path: <b@remote.test>\r\nDelivered-To: two@example.test\r\nSubject: two\r\n\r\ny\r\n',
    );
    // the recipient in another domain waits in deferred/
    expect(fs.readdirSync(path.join(dir, 'queue', 'deferred'))).toEqual(['BBB']);
  });
});

describe('recovery after a crash', () => {
  it('gives no second copy to recipients noted done, and clears what a killed process left half-written', async () => {
    const dir = tmpDir('moat-queue-');
    const active = path.join(dir, 'queue', 'active');
    const deferred = path.join(dir, 'queue', 'deferred');
    fs.mkdirSync(active, { recursive: true });
    fs.mkdirSync(deferred, { recursive: true });
    // a delivery killed after p and q had their copies, before r's
    await writeEnvelopeFile(active, head('CCC', ['p@example.test', 'q@example.test', 'r@example.test']), [
      Buffer.from('Subject: three\r\n\r\nz\r\n'),
    ]);
    fs.writeFileSync(path.join(active, '.CCC.done'), 'p@example.test\nq@example.test\n');
    fs.writeFileSync(path.join(active, '.GONE.done'), 'x@example.test\n'); // its message is gone
    // a deferred file half-written by a process that no longer runs
    fs.writeFileSync(path.join(deferred, `.DDD.${spawnSync('true').pid}.1.tmp`), 'partial');
    const q = queue(dir);
    await q.init();
    await waitFor(() => filesUnder(active).length === 0 || undefined, 3000, 'the active queue to empty');
    await q.drain();
    expect(maildirMessages(path.join(dir, 'mail'), 'p@example.test')).toHaveLength(0);
    expect(maildirMessages(path.join(dir, 'mail'), 'q@example.test')).toHaveLength(0);
    expect(maildirMessages(path.join(dir, 'mail'), 'r@example.test')).toHaveLength(1);
    expect(fs.readdirSync(deferred)).toEqual([]);
  });

  it('notes each copy as it is made, and removes the note with the queue file', async () => {
    const dir = tmpDir('moat-queue-');
    let open!: () => void;
    const gate = new Promise<void>((r) => (open = r));
    // s's copy waits at the gate: the message is in active/ with t's copy made
    const q = new Queue({
      dir: path.join(dir, 'queue'),
      maildir: path.join(dir, 'mail'),
      domains: ['example.test'],
      hostname: 'mx.example.test',
      runDelayMs: 60_000,
      logger: silentLogger(),
      write: async (d, name, parts, opts) => {
        if (d.includes(`${path.sep}s${path.sep}`)) await gate;
        return writer.write(d, name, parts, opts);
      },
    });
    await q.init();
    const h = head('EEE', ['t@example.test', 's@example.test']);
    q.settle(h, await q.accept(h, body()));
    const note = path.join(q.active, '.EEE.done');
    await waitFor(
      () => (fs.existsSync(note) && fs.readFileSync(note, 'utf8')) || undefined,
      3000,
      'the note',
    );
    expect(fs.readFileSync(note, 'utf8')).toBe('t@example.test\n');
    open();
    await waitFor(
      () => fs.readdirSync(q.active).length === 0 || undefined,
      3000,
      'the active queue to empty',
    );
    await q.drain();
    for (const to of ['t@example.test', 's@example.test'])
      expect(maildirMessages(path.join(dir, 'mail'), to)).toHaveLength(1);
  });
});

describe('accepting a message', () => {
  it('delivers one local recipient into the Maildir before it resolves, with no queue file', async () => {
    const dir = tmpDir('moat-queue-');
    const q = queue(dir);
    await q.init();
    const accepted = await q.accept(head('ONE', ['Bob@example.test']), body());
    // already durable in new/ when accept() resolves: nothing is left to do after the 250
    const [msg] = maildirMessages(path.join(dir, 'mail'), 'bob@example.test');
    expect(msg?.text).toBe(
      'Return-Path: <a@remote.test>\r\nDelivered-To: Bob@example.test\r\nReceived: x\r\nSubject: s\r\n\r\nhi\r\n',
    );
    expect(accepted).toEqual({
      kind: 'delivered',
      bytes: msg!.text.length,
      to: 'Bob@example.test',
      file: msg!.file,
    });
    expect(path.basename(msg!.file)).toMatch(new RegExp(`,S=${msg!.text.length}$`));
    expect(filesUnder(path.join(dir, 'queue'))).toEqual([]);
    expect(filesUnder(path.join(dir, 'mail', 'example.test', 'bob', 'tmp'))).toEqual([]);
    await q.drain();
  });

  it('queues several recipients in active/ first, then delivers the local ones and defers the others', async () => {
    const dir = tmpDir('moat-queue-');
    const q = queue(dir);
    await q.init();
    const h = head('TWO', ['c@example.test', 'd@example.test', 'e@elsewhere.test']);
    const accepted = await q.accept(h, body());
    expect(accepted).toMatchObject({ kind: 'queued', name: 'TWO' });
    expect(fs.readdirSync(q.active)).toEqual(['TWO']);
    q.settle(h, accepted);
    await waitFor(
      () => fs.readdirSync(q.active).length === 0 || undefined,
      3000,
      'the active queue to empty',
    );
    await q.drain();
    for (const to of ['c@example.test', 'd@example.test']) {
      const [msg] = maildirMessages(path.join(dir, 'mail'), to);
      expect(msg?.text).toBe(
        `Return-Path: <a@remote.test>\r\nDelivered-To: ${to}\r\nReceived: x\r\nSubject: s\r\n\r\nhi\r\n`,
      );
    }
    expect(fs.readdirSync(q.deferred)).toEqual(['TWO']);
  });

  it('defers a local recipient whose mailbox fails, delivers the others, and retries it on the queue run', async () => {
    const dir = tmpDir('moat-queue-');
    const q = queue(dir, 200);
    await q.init();
    const broken = path.join(dir, 'mail', 'example.test', 'g');
    fs.mkdirSync(broken, { recursive: true });
    fs.writeFileSync(path.join(broken, 'tmp'), 'not a folder');
    const h = head('THREE', ['g@example.test', 'h@example.test', 'i@elsewhere.test']);
    const accepted = await q.accept(h, body());
    q.settle(h, accepted);
    await waitFor(
      () => fs.readdirSync(q.active).length === 0 || undefined,
      3000,
      'the active queue to empty',
    );
    // h has its copy; g waits in deferred/ with the recipient in another domain
    expect(maildirMessages(path.join(dir, 'mail'), 'h@example.test')).toHaveLength(1);
    const deferred = path.join(q.deferred, 'THREE');
    expect(JSON.parse(fs.readFileSync(deferred, 'utf8').split('\n')[0]!)).toMatchObject({
      rcpt: ['g@example.test', 'i@elsewhere.test'],
      reason: 'local delivery failed',
    });
    // the mailbox is mended: the next queue run delivers g, and the file keeps only i
    fs.rmSync(path.join(broken, 'tmp'));
    await waitFor(
      () => maildirMessages(path.join(dir, 'mail'), 'g@example.test').length === 1 || undefined,
      3000,
      'the queue run to deliver g',
    );
    await waitFor(
      () =>
        JSON.parse(fs.readFileSync(deferred, 'utf8').split('\n')[0]!).rcpt.join() === 'i@elsewhere.test' ||
        undefined,
      3000,
      'the deferred file to keep only i',
    );
    await q.drain();
    const [msg] = maildirMessages(path.join(dir, 'mail'), 'g@example.test');
    expect(msg?.text).toBe(
      'Return-Path: <a@remote.test>\r\nDelivered-To: g@example.test\r\nReceived: x\r\nSubject: s\r\n\r\nhi\r\n',
    );
    expect(maildirMessages(path.join(dir, 'mail'), 'h@example.test')).toHaveLength(1); // not twice
  });

  it('tries a message left in active/ (its mailbox and deferred/ both failed) again at the queue run', async () => {
    const dir = tmpDir('moat-queue-');
    const q = queue(dir, 200);
    await q.init();
    // a full disk, as far as this message is concerned: one mailbox and deferred/ cannot be written
    const broken = path.join(dir, 'mail', 'example.test', 'm');
    fs.mkdirSync(broken, { recursive: true });
    fs.writeFileSync(path.join(broken, 'tmp'), 'not a folder');
    fs.rmSync(q.deferred, { recursive: true });
    fs.writeFileSync(q.deferred, 'not a folder');
    const h = head('STUCK', ['m@example.test', 'n@example.test']);
    const accepted = await q.accept(h, body());
    q.settle(h, accepted);
    await waitFor(
      () => maildirMessages(path.join(dir, 'mail'), 'n@example.test').length === 1 || undefined,
      3000,
      'n to get its copy',
    );
    await new Promise((r) => setTimeout(r, 300));
    expect(fs.readdirSync(q.active)).toContain('STUCK');
    // space again: the next queue run delivers m, without a restart (before: only at the next start-up)
    fs.rmSync(q.deferred);
    fs.mkdirSync(q.deferred);
    fs.rmSync(path.join(broken, 'tmp'));
    await waitFor(
      () => maildirMessages(path.join(dir, 'mail'), 'm@example.test').length === 1 || undefined,
      3000,
      'the queue run to deliver m',
    );
    await waitFor(
      () => fs.readdirSync(q.active).length === 0 || undefined,
      3000,
      'the active queue to empty',
    );
    await q.drain();
    expect(maildirMessages(path.join(dir, 'mail'), 'n@example.test')).toHaveLength(1); // not twice
    expect(fs.readdirSync(q.deferred)).toEqual([]);
  });

  it('skips, on a deferred retry, the recipients noted as done by a retry a crash cut short', async () => {
    const dir = tmpDir('moat-queue-');
    const deferred = path.join(dir, 'queue', 'deferred');
    fs.mkdirSync(deferred, { recursive: true });
    await writeEnvelopeFile(
      deferred,
      { ...head('FOUR', ['j@example.test', 'k@example.test', 'l@elsewhere.test']), attempts: 1 },
      [Buffer.from('Subject: four\r\n\r\nz\r\n')],
    );
    // the retry before the crash gave j its copy and noted it
    fs.writeFileSync(path.join(deferred, '.FOUR.done'), 'j@example.test\n');
    // and a done list whose deferred file is gone
    fs.writeFileSync(path.join(deferred, '.GONE.done'), 'm@example.test\n');
    const q = queue(dir, 200);
    await q.init();
    expect(fs.readdirSync(deferred).sort()).toEqual(['.FOUR.done', 'FOUR']);
    await waitFor(
      () => maildirMessages(path.join(dir, 'mail'), 'k@example.test').length === 1 || undefined,
      3000,
      'the queue run to deliver k',
    );
    await waitFor(
      () =>
        JSON.parse(fs.readFileSync(path.join(deferred, 'FOUR'), 'utf8').split('\n')[0]!).rcpt.join() ===
          'l@elsewhere.test' || undefined,
      3000,
      'the deferred file to keep only l',
    );
    await q.drain();
    expect(maildirMessages(path.join(dir, 'mail'), 'j@example.test')).toHaveLength(0);
    expect(fs.readdirSync(deferred)).toEqual(['FOUR']);
  });

  it('gives no second copy on a deferred retry when neither the done note nor the rewrite could be written', async () => {
    const dir = tmpDir('moat-queue-');
    const deferred = path.join(dir, 'queue', 'deferred');
    fs.mkdirSync(deferred, { recursive: true });
    await writeEnvelopeFile(
      deferred,
      { ...head('FIVE', ['n@example.test', 'o@elsewhere.test']), attempts: 1 },
      [Buffer.from('Subject: five\r\n\r\nz\r\n')],
    );
    // the queue's disk is full: the done note cannot be written (a folder in its place), and the first
    // rewrite of the deferred file fails
    fs.mkdirSync(path.join(deferred, '.FIVE.done'));
    let refuse = 1;
    const q = new Queue({
      dir: path.join(dir, 'queue'),
      maildir: path.join(dir, 'mail'),
      domains: ['example.test'],
      hostname: 'mx.example.test',
      runDelayMs: 100,
      logger: silentLogger(),
      write: (d, name, parts, opts) => {
        if (d === deferred && refuse-- > 0)
          return Promise.reject(
            Object.assign(new Error('ENOSPC: no space left on device'), { code: 'ENOSPC' }),
          );
        return writer.write(d, name, parts, opts);
      },
    });
    await q.init();
    await waitFor(
      () =>
        JSON.parse(fs.readFileSync(path.join(deferred, 'FIVE'), 'utf8').split('\n')[0]!).rcpt.join() ===
          'o@elsewhere.test' || undefined,
      3000,
      'a later run to rewrite the file with only o',
    );
    await q.drain();
    expect(maildirMessages(path.join(dir, 'mail'), 'n@example.test')).toHaveLength(1);
  });

  it('rejects when the Maildir cannot be written, and leaves nothing behind', async () => {
    const dir = tmpDir('moat-queue-');
    const q = queue(dir);
    await q.init();
    await q.accept(head('OK', ['f@example.test']), body());
    const tmp = path.join(dir, 'mail', 'example.test', 'f', 'tmp');
    fs.rmSync(tmp, { recursive: true });
    await expect(q.accept(head('BAD', ['f@example.test']), body())).rejects.toMatchObject({ code: 'ENOENT' });
    expect(maildirMessages(path.join(dir, 'mail'), 'f@example.test')).toHaveLength(1);
    expect(filesUnder(path.join(dir, 'queue'))).toEqual([]);
    await q.drain();
  });
});
