/**
 * service: delivery on 10025, Postfix's reinjection smtpd and queue. No checks at all: mail that
 * reached it has been judged. Answers 250 only once the message is durable: in its Maildir (one local
 * recipient, a final delivery) or in the queue. Durable writes of messages up to 1 MiB go through one
 * worker thread (DurableWriter), which spares the thread-pool round trip of each fs call.
 */
import { internalSizeLimit, type MoatConfig } from '@moat/config';
import type { Logger } from '@moat/log';
import type { RunningService } from '@moat/service';
import { createListener, reply, hopReceived, type Reply } from '@moat/smtp-listener';
import { DurableWriter } from '@moat/spool';
import { Queue, type Accepted } from './queue.js';

export const deliveryReplies = {
  queued: (id: string) => reply(250, '2.0.0', `Ok: queued as ${id}`),
  queueWriteError: () => reply(451, '4.3.0', 'Error: queue file write error'),
} as const;

export async function startDelivery(config: Readonly<MoatConfig>, logger: Logger): Promise<RunningService> {
  const c = config.delivery;
  const writer = new DurableWriter();
  const queue = new Queue({
    dir: c.queueDir,
    maildir: c.maildir,
    domains: config.domains,
    hostname: config.hostname,
    runDelayMs: c.queueRunDelay,
    logger,
    write: (dir, name, parts, opts) => writer.write(dir, name, parts, opts),
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
        let accepted: Accepted;
        const head = {
          v: 1 as const,
          id: tx.id,
          from: tx.mailFrom.address,
          rcpt,
          client,
          arrived: tx.startedAt,
        };
        try {
          accepted = await queue.accept(head, [received, body]);
        } catch (err) {
          // the body's own error (the client left, or the size limit): nothing to report of the disk.
          // A write that fails while it streams the body (ENOSPC mid-message) leaves the body destroyed
          // with an AbortError of its own: the error thrown is then the disk's, and is what is logged
          const failed = deliveryReplies.queueWriteError();
          if (body.errored && err === body.errored) {
            logger.info(
              { id: tx.id, client: client.address, err: body.errored.message },
              'message not received in full; nothing queued',
            );
          } else {
            // the envelope and the reply too: which message, for whom, and what the previous hop was told
            logger.error(
              {
                id: tx.id,
                ident: client.ident,
                client: client.address,
                from: tx.mailFrom.address,
                to: rcpt,
                err,
                reply: `${failed.code} ${failed.lines[0]}`,
              },
              'queue write failed',
            );
          }
          return failed;
        }
        const r = deliveryReplies.queued(tx.id);
        logger.info(
          {
            id: tx.id,
            ident: client.ident,
            client: client.address,
            from: tx.mailFrom.address,
            to: rcpt,
            size: accepted.bytes,
            reply: `${r.code} ${r.lines[0]}`,
          },
          'queued',
        );
        queue.settle(head, accepted);
        return r;
      },
    },
  });
  logger.info({ listen: `${listener.address.host}:${listener.address.port}` }, 'listening');

  return {
    async stop() {
      await listener.close();
      await queue.drain();
      await writer.close();
    },
  };
}
