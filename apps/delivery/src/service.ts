/**
 * service: delivery on 10025, Postfix's reinjection smtpd and queue. No checks at all: mail that
 * reached it has been judged. Answers 250 only once the message is durable in the queue.
 */
import { internalSizeLimit, type MoatConfig } from '@moat/config';
import type { Logger } from '@moat/log';
import type { RunningService } from '@moat/service';
import { createListener, reply, hopReceived, type Reply } from '@moat/smtp-listener';
import { Queue } from './queue.js';

export const deliveryReplies = {
  queued: (id: string) => reply(250, '2.0.0', `Ok: queued as ${id}`),
  queueWriteError: () => reply(451, '4.3.0', 'Error: queue file write error'),
} as const;

export async function startDelivery(config: Readonly<MoatConfig>, logger: Logger): Promise<RunningService> {
  const c = config.delivery;
  const queue = new Queue({
    dir: c.queueDir,
    maildir: c.maildir,
    domains: config.domains,
    hostname: config.hostname,
    runDelayMs: c.queueRunDelay,
    logger,
  });
  await queue.init();

  const listener = await createListener({
    service: 'delivery',
    hostname: config.hostname,
    listen: c.listen,
    peers: c.peers,
    xforward: true,
    messageSizeLimit: internalSizeLimit(config),
    logger,
    handlers: {
      async data(body, tx): Promise<Reply> {
        const client = tx.client;
        const rcpt = tx.rcptTo.map((r) => r.address);
        const received = hopReceived(tx, { hostname: config.hostname, service: 'delivery' });
        let queued: { bytes: number; copy: Buffer | undefined; name: string };
        const head = {
          v: 1 as const,
          id: tx.id,
          from: tx.mailFrom.address,
          rcpt,
          client,
          arrived: tx.startedAt,
        };
        try {
          queued = await queue.enqueue(head, [received, body]);
        } catch (err) {
          if (body.destroyed && !body.readableEnded) {
            logger.info(
              { id: tx.id, client: client.address },
              'client went away during DATA; nothing queued',
            );
          } else {
            logger.error({ id: tx.id, err }, 'queue write failed');
          }
          return deliveryReplies.queueWriteError();
        }
        const r = deliveryReplies.queued(tx.id);
        logger.info(
          {
            id: tx.id,
            ident: client.ident,
            client: client.address,
            from: tx.mailFrom.address,
            to: rcpt,
            size: queued.bytes,
            reply: `${r.code} ${r.lines[0]}`,
          },
          'queued',
        );
        queue.schedule(queued.name, { head, copy: queued.copy });
        return r;
      },
    },
  });
  logger.info({ listen: `${listener.address.host}:${listener.address.port}` }, 'listening');

  return {
    async stop() {
      await listener.close();
      await queue.drain();
    },
  };
}
