/**
 * service: quarantine on 10026. For now it stores what filter hands it, durably (one envelope file per
 * message under storeDir), before answering 250; the web UI, release and digests come in its own issue.
 */
import { internalSizeLimit, type MoatConfig } from '@moat/config';
import type { Logger } from '@moat/log';
import type { RunningService } from '@moat/service';
import { createListener, hopReceived, reply, type Reply } from '@moat/smtp-listener';
import { removeOrphans, writeEnvelopeFile } from '@moat/spool';
import fsp from 'node:fs/promises';

export const quarantineReplies = {
  stored: (id: string) => reply(250, '2.0.0', `Ok: quarantined as ${id}`),
  storeError: () => reply(451, '4.3.0', 'Error: quarantine store write error'),
} as const;

export async function startQuarantine(config: Readonly<MoatConfig>, logger: Logger): Promise<RunningService> {
  const c = config.quarantine;
  await fsp.mkdir(c.storeDir, { recursive: true });
  // half-written files of a quarantine killed mid-store: never answered 250, so nothing is lost
  const orphans = await removeOrphans(c.storeDir);
  if (orphans)
    logger.info({ dir: c.storeDir, files: orphans }, 'removed temporary files left by a stopped quarantine');
  const listener = await createListener({
    service: 'quarantine',
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
        const received = hopReceived(tx, { hostname: config.hostname, service: 'quarantine' });
        let bytes: number;
        try {
          ({ bytes } = await writeEnvelopeFile(
            c.storeDir,
            { v: 1, id: tx.id, from: tx.mailFrom.address, rcpt, client, arrived: tx.startedAt },
            [received, body],
          ));
        } catch (err) {
          logger.error({ id: tx.id, err }, 'quarantine write failed');
          return quarantineReplies.storeError();
        }
        const r = quarantineReplies.stored(tx.id);
        logger.info(
          {
            id: tx.id,
            ident: client.ident,
            client: client.address,
            from: tx.mailFrom.address,
            to: rcpt,
            size: bytes,
            reply: `${r.code} ${r.lines[0]}`,
          },
          'stored',
        );
        return r;
      },
    },
  });
  logger.info({ listen: `${listener.address.host}:${listener.address.port}` }, 'listening');
  return { stop: () => listener.close() };
}
