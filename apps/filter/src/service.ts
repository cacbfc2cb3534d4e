/**
 * service: filter on 10024 (amavisd-new's place). For now a pass-through hop: it spools each message
 * (memory up to filter.spoolMemoryLimit, a file beyond), forwards it to delivery with XFORWARD and
 * relays delivery's reply, so a 250 here means delivery has the message. Scanning comes in its own issue.
 */
import path from 'node:path';
import { internalSizeLimit, type MoatConfig } from '@moat/config';
import type { Logger } from '@moat/log';
import type { RunningService } from '@moat/service';
import { createListener, hopReceived, type Reply } from '@moat/smtp-listener';
import { RelayError, poolFor, RelayTransaction } from '@moat/smtp-relay';
import { MessageSpool } from '@moat/spool';

export async function startFilter(config: Readonly<MoatConfig>, logger: Logger): Promise<RunningService> {
  const c = config.filter;
  const spoolDir = path.join(config.dataDir, 'filter');
  const delivery = poolFor('delivery', c.next, c, config.hostname, logger);

  const listener = await createListener({
    service: 'filter',
    hostname: config.hostname,
    listen: c.listen,
    peers: c.peers,
    xforward: true,
    messageSizeLimit: internalSizeLimit(config),
    logger,
    handlers: {
      async data(body, tx): Promise<Reply> {
        const client = tx.client;
        let spool: MessageSpool;
        try {
          spool = await MessageSpool.from(body, { dir: spoolDir, memoryLimit: c.spoolMemoryLimit });
        } catch (err) {
          logger.info(
            { id: tx.id, client: client.address, err: (err as Error).message },
            'message not received in full; nothing forwarded',
          );
          throw err;
        }
        try {
          const rcpt = tx.rcptTo.map((r) => r.address);
          const received = hopReceived(tx, { hostname: config.hostname, service: 'filter' });
          const started = Date.now();
          let r: Reply;
          try {
            r = await RelayTransaction.send(
              delivery,
              { ...client, ident: tx.id },
              { mailFrom: tx.mailFrom, rcptTo: tx.rcptTo },
              () => spool.stream(),
              received,
            );
          } catch (err) {
            if (!(err instanceof RelayError)) throw err;
            logger.warn({ id: tx.id, next: err.target, err: err.message }, 'delivery failed');
            r = err.reply;
          }
          logger.info(
            {
              id: tx.id,
              ident: client.ident,
              client: client.address,
              from: tx.mailFrom.address,
              to: rcpt,
              size: spool.size,
              relayMs: Date.now() - started,
              reply: `${r.code} ${r.lines.join(' / ')}`,
            },
            r.code < 300 ? 'passed' : 'not passed',
          );
          return r;
        } finally {
          await spool.dispose();
        }
      },
    },
  });
  logger.info({ listen: `${listener.address.host}:${listener.address.port}` }, 'listening');
  return {
    async stop() {
      await listener.close();
      delivery.close();
    },
  };
}
