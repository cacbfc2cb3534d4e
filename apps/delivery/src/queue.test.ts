import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { silentLogger } from '@moat/log';
import { writeEnvelopeFile } from '@moat/spool';
import { filesUnder, maildirMessages, tmpDir, waitFor } from '@moat/testkit';
import { Queue } from './queue.js';

const client = { address: '192.0.2.1', port: 25, name: 'unknown', helo: 'x', proto: 'ESMTP' };

function queue(dir: string): Queue {
  return new Queue({
    dir: path.join(dir, 'queue'),
    maildir: path.join(dir, 'mail'),
    domains: ['example.test'],
    hostname: 'mx.example.test',
    runDelayMs: 60_000,
    logger: silentLogger(),
  });
}

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
