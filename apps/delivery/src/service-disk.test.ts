/**
 * delivery's log when the disk fails in the middle of a streamed write (a full disk): the write's
 * error is logged as a queue write failure, not as a client that left. A full disk mid-message is
 * stood in for by a DurableWriter whose write reads part of the body, then fails with ENOSPC.
 */
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { derive, schema } from '@moat/config';
import { memoryLogger } from '@moat/log';
import type { RunningService } from '@moat/service';
import { freePort, message, SmtpClient, tmpDir } from '@moat/testkit';
import type { Part } from '@moat/spool';
import { startDelivery } from './service.js';

vi.mock('@moat/spool', async (importOriginal) => {
  const spool = await importOriginal<typeof import('@moat/spool')>();
  class FullDiskWriter extends spool.DurableWriter {
    override async write(_dir: string, _name: unknown, parts: readonly Part[]): Promise<never> {
      let bytes = 0;
      for (const part of parts) {
        if (Buffer.isBuffer(part)) continue;
        for await (const chunk of part as AsyncIterable<Buffer>) {
          bytes += chunk.length;
          if (bytes > 64 * 1024)
            throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
        }
      }
      throw new Error('the body ended before the disk filled up');
    }
  }
  return { ...spool, DurableWriter: FullDiskWriter };
});

const { logger, lines } = memoryLogger();

let port: number;
let service: RunningService;

beforeAll(async () => {
  port = await freePort();
  const config = derive(
    schema.parse({
      hostname: 'mx.example.test',
      domains: ['example.test'],
      dataDir: tmpDir('moat-delivery-'),
      delivery: { listen: `127.0.0.1:${port}` },
    }),
  );
  service = await startDelivery(config, logger);
});

afterAll(async () => {
  await service?.stop();
});

describe('delivery on a disk that fills up mid-message', () => {
  it('answers 451 4.3.0 and logs the disk error, not a client that left', async () => {
    const c = await SmtpClient.connect(port);
    await c.read();
    await c.cmd('EHLO filter.test');
    const big = 'x'.repeat(998) + '\r\n';
    const r = await c.send('a@remote.test', ['hal@example.test'], message({ body: big.repeat(300) }));
    await c.quit();
    expect(r.final?.text).toBe('451 4.3.0 Error: queue file write error');
    // before: 'message not received in full; nothing queued', err 'The operation was aborted', at info
    expect(lines.filter((l) => l.msg === 'message not received in full; nothing queued')).toEqual([]);
    const logged = lines.find((l) => l.msg === 'queue write failed');
    expect(logged).toMatchObject({ level: 'error', err: { code: 'ENOSPC' } });
  });
});
