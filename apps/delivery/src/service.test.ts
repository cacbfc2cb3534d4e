import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { derive, schema } from '@moat/config';
import { memoryLogger } from '@moat/log';
import type { RunningService } from '@moat/service';
import { filesUnder, freePort, maildirMessages, message, SmtpClient, tmpDir, waitFor } from '@moat/testkit';
import { startDelivery } from './service.js';

/** Records what the service logs: the message and the fields of each line. */
const { logger, lines } = memoryLogger();

let dir: string;
let port: number;
let service: RunningService;

beforeAll(async () => {
  dir = tmpDir('moat-delivery-');
  port = await freePort();
  const config = derive(
    schema.parse({
      hostname: 'mx.example.test',
      domains: ['example.test'],
      dataDir: dir,
      delivery: { listen: `127.0.0.1:${port}` },
    }),
  );
  service = await startDelivery(config, logger);
});

afterAll(async () => {
  await service?.stop();
});

async function send(to: string[], body = message()): Promise<string | undefined> {
  const c = await SmtpClient.connect(port);
  await c.read();
  await c.cmd('EHLO filter.test');
  const r = await c.send('a@remote.test', to, body);
  await c.quit();
  return r.final?.text;
}

describe('delivery', () => {
  it('answers 250 only with the message already in the Maildir (one local recipient), and logs both lines', async () => {
    const final = await send(['bob@example.test'], message({ subject: 'direct' }));
    expect(final).toMatch(/^250 2\.0\.0 Ok: queued as \w+$/);
    const id = final!.split(' ').pop()!;
    // no waiting: the 250 came after the rename into new/ and its fsync
    const [msg] = maildirMessages(path.join(dir, 'mail'), 'bob@example.test');
    expect(msg?.text).toMatch(
      /^Return-Path: <a@remote\.test>\r\nDelivered-To: bob@example\.test\r\nReceived: /,
    );
    expect(msg?.text).toContain('Subject: direct\r\n');
    expect(filesUnder(path.join(dir, 'queue'))).toEqual([]);
    expect(lines.find((l) => l.msg === 'queued' && l.id === id)).toMatchObject({
      client: '127.0.0.1',
      from: 'a@remote.test',
      to: ['bob@example.test'],
      size: msg!.text.length,
      reply: final,
    });
    expect(lines.find((l) => l.msg === 'delivered' && l.id === id)).toMatchObject({
      to: 'bob@example.test',
      relay: 'maildir',
      file: msg!.file,
      status: 'sent',
    });
  });

  it('streams a message larger than the worker takes straight into the Maildir too', async () => {
    const big = 'x'.repeat(998) + '\r\n';
    const body = message({ subject: 'big', body: big.repeat(1500) }); // 1.5 MB
    const final = await send(['carol@example.test'], body);
    expect(final).toMatch(/^250 2\.0\.0 /);
    const [msg] = maildirMessages(path.join(dir, 'mail'), 'carol@example.test');
    expect(msg?.text.endsWith(body)).toBe(true);
    expect(path.basename(msg!.file)).toMatch(new RegExp(`,S=${msg!.text.length}$`));
  });

  it('queues a message for several recipients and delivers the local copies after the 250', async () => {
    const final = await send(['dan@example.test', 'eve@example.test', 'x@elsewhere.test']);
    expect(final).toMatch(/^250 2\.0\.0 /);
    for (const to of ['dan@example.test', 'eve@example.test'])
      await waitFor(() => maildirMessages(path.join(dir, 'mail'), to).length === 1 || undefined, 3000, to);
    await waitFor(
      () => fs.readdirSync(path.join(dir, 'queue', 'active')).length === 0 || undefined,
      3000,
      'the active queue to empty',
    );
    expect(fs.readdirSync(path.join(dir, 'queue', 'deferred'))).toHaveLength(1);
  });

  it('answers 451 4.3.0 when the Maildir cannot be written, leaves nothing behind, and makes it again', async () => {
    expect(await send(['fay@example.test'])).toMatch(/^250 /);
    const mailbox = path.join(dir, 'mail', 'example.test', 'fay');
    fs.rmSync(path.join(mailbox, 'tmp'), { recursive: true });
    expect(await send(['fay@example.test'])).toBe('451 4.3.0 Error: queue file write error');
    expect(filesUnder(mailbox).map((f) => path.relative(mailbox, f).split(path.sep)[0])).toEqual(['new']);
    expect(lines.filter((l) => l.msg === 'queue write failed').at(-1)).toMatchObject({
      level: 'error',
      client: '127.0.0.1',
      from: 'a@remote.test',
      to: ['fay@example.test'],
      reply: '451 4.3.0 Error: queue file write error',
    });
    // the mailbox removed by hand: the next message makes its folders again, as Postfix's virtual does
    fs.rmSync(mailbox, { recursive: true });
    expect(await send(['fay@example.test'], message({ subject: 'again' }))).toMatch(/^250 2\.0\.0 /);
    expect(maildirMessages(path.join(dir, 'mail'), 'fay@example.test').map((m) => m.text)).toEqual([
      expect.stringContaining('Subject: again\r\n'),
    ]);
  });

  it('answers 451 4.3.0 when a message too large for the worker cannot be written', async () => {
    // streamed (past the worker's 1 MiB), and the file cannot be created: the rest of the body is read
    // and dropped, and the answer comes once it is in (lean.test.ts holds the case of a full body)
    const mailbox = path.join(dir, 'mail', 'example.test', 'gus');
    fs.mkdirSync(mailbox, { recursive: true });
    fs.writeFileSync(path.join(mailbox, 'tmp'), 'not a folder');
    const big = 'x'.repeat(998) + '\r\n';
    const started = Date.now();
    const final = await send(['gus@example.test'], message({ subject: 'big', body: big.repeat(2000) }));
    expect(final).toBe('451 4.3.0 Error: queue file write error');
    expect(Date.now() - started).toBeLessThan(5000);
    const logged = lines.filter((l) => l.msg === 'queue write failed').at(-1);
    expect(String((logged?.err as Error | undefined)?.message)).toMatch(/ENOTDIR|EEXIST/);
  });
});
