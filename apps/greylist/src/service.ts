/**
 * service: greylist on 10023, the MX smtpd behind screen (Postfix's `smtpd pass` service).
 *
 * Reads the real client from screen's PROXY header, offers STARTTLS, SMTPUTF8 and 8BITMIME, applies
 * relay protection and the size and recipient limits, and proxies each transaction to filter in real
 * time, like Postfix's smtpd_proxy_filter: MAIL and every accepted RCPT are relayed as they come and
 * filter's replies handed back, the body is streamed as it arrives, and the client's final reply is
 * filter's final reply. So a 250 here means filter (and so delivery) has the message.
 */
import { type MoatConfig } from '@moat/config';
import type { Logger } from '@moat/log';
import type { RunningService } from '@moat/service';
import { createListener, ensureTlsCertificate, hopReceived, type Reply } from '@moat/smtp-listener';
import { poolFor, RelayError, RelayTransaction } from '@moat/smtp-relay';
import { relayCheck } from './checks/relay.js';
import { greylistReplies } from './replies.js';

const RELAY = 'relay';

function relayOf(state: Record<string, unknown>): RelayTransaction | undefined {
  return state[RELAY] as RelayTransaction | undefined;
}

export async function startGreylist(config: Readonly<MoatConfig>, logger: Logger): Promise<RunningService> {
  const c = config.greylist;
  const domains = new Set(config.domains);
  const tls = await ensureTlsCertificate({
    ...config.tls,
    dataDir: config.dataDir,
    hostname: config.hostname,
  });
  if (tls.generated) logger.info({ dir: config.dataDir }, 'generated a self-signed certificate for STARTTLS');
  const filter = poolFor('filter', c.next, c, config.hostname, logger);
  const fail = (id: string, stage: string, err: unknown): Reply => {
    if (err instanceof RelayError) {
      logger.warn({ id, stage, next: err.target, err: err.message }, 'filter failed');
      return err.reply;
    }
    throw err;
  };

  const listener = await createListener({
    service: 'greylist',
    hostname: config.hostname,
    listen: c.listen,
    peers: c.peers,
    proxyPeers: c.proxyPeers,
    xforward: false,
    messageSizeLimit: c.messageSizeLimit,
    recipientLimit: c.recipientLimit,
    idleTimeoutMs: c.idleTimeout,
    tls: { key: tls.key, cert: tls.cert },
    logger,
    handlers: {
      async mailFrom(tx) {
        try {
          const { tx: relay, reply } = await RelayTransaction.begin(
            filter,
            { ...tx.client, ident: tx.id },
            tx.mailFrom,
          );
          if (relay) tx.state[RELAY] = relay;
          return reply.code >= 300 ? reply : undefined;
        } catch (err) {
          return fail(tx.id, 'MAIL', err);
        }
      },
      async rcptTo(rcpt, tx) {
        const verdict = relayCheck(rcpt.address, domains);
        if (!verdict.ok) {
          const r = greylistReplies.relayDenied(rcpt.address);
          logger.info(
            {
              id: tx.id,
              client: tx.client.address,
              from: tx.mailFrom.address,
              to: rcpt.address,
              why: verdict.why,
              reply: `${r.code} ${r.lines[0]}`,
            },
            'NOQUEUE: reject: RCPT',
          );
          return r;
        }
        const relay = relayOf(tx.state);
        if (!relay) return fail(tx.id, 'RCPT', new RelayError('lost', 'no transaction', 'filter'));
        try {
          const r = await relay.rcpt(rcpt);
          return r.code >= 300 ? r : undefined;
        } catch (err) {
          delete tx.state[RELAY];
          return fail(tx.id, 'RCPT', err);
        }
      },
      async data(body, tx, session, info) {
        const relay = relayOf(tx.state);
        const client = tx.client;
        const rcpt = tx.rcptTo.map((r) => r.address);
        if (!relay) {
          body.resume();
          return fail(tx.id, 'DATA', new RelayError('lost', 'no transaction', 'filter'));
        }
        const received = hopReceived(tx, {
          hostname: config.hostname,
          service: 'greylist',
          with: session.raw.transmissionType || 'ESMTP',
        });
        let r: Reply;
        try {
          r = await relay.data(body, received);
        } catch (err) {
          if (!(err instanceof RelayError)) {
            logger.info(
              { id: tx.id, client: client.address, err: (err as Error).message },
              'message not received in full; filter transaction aborted',
            );
            throw err;
          }
          r = fail(tx.id, 'DATA', err);
        }
        logger.info(
          {
            id: tx.id,
            client: client.address,
            helo: client.helo,
            from: tx.mailFrom.address,
            to: rcpt,
            size: info.bytes(),
            bareLineEndings: info.bareLineEndings() || undefined,
            tls: session.secure || undefined,
            reply: `${r.code} ${r.lines.join(' / ')}`,
          },
          r.code < 300 ? 'accepted' : 'not accepted',
        );
        return r;
      },
      reset(tx, _session, why) {
        relayOf(tx.state)?.abort(why);
      },
    },
  });
  logger.info({ listen: `${listener.address.host}:${listener.address.port}` }, 'listening');
  return {
    async stop() {
      await listener.close();
      filter.close();
    },
  };
}
