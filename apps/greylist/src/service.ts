/**
 * service: greylist on 10023, the MX smtpd behind screen (Postfix's `smtpd pass` service).
 *
 * Reads the real client from screen's PROXY header, offers STARTTLS, SMTPUTF8 and 8BITMIME, applies
 * relay protection and the size and recipient limits, and proxies each transaction to filter, like
 * Postfix's smtpd_proxy_filter: at MAIL a pooled connection to filter is taken (filter down: 451 4.4.1
 * at once), at DATA the envelope goes in one pipelined write (XFORWARD, MAIL, the accepted RCPTs,
 * DATA), the body is streamed as it arrives, and the client's final reply is filter's final reply. So
 * a 250 here means filter (and so delivery) has the message. Sending the envelope at DATA instead of
 * command by command saves two round trips per message (two writes and two reads on each side), and a
 * transaction whose every recipient is greylisted never reaches filter at all. Filter accepts what
 * greylist accepted (both check the same domains); if it ever refuses MAIL or a recipient, its refusal
 * is the final reply (451 4.3.0 when it refuses some recipients but not all).
 *
 * RCPT, in Postfix's order: relay protection (554 5.7.1), unknown recipients (550 5.1.1), then
 * greylisting per recipient (451 4.7.1, or 451 4.3.0 when the store fails).
 * Nobody is greylisted into an open relay, and an unknown user gets a 5xx, not a 4xx. On a triplet's
 * first pass the X-Greylist header goes on top of the message, under this hop's Received header.
 * The optional policy port (greylist.policyListen) runs in this process on the same engine.
 */
import { NetworkList, type MoatConfig } from '@moat/config';
import type { Logger } from '@moat/log';
import type { RunningService } from '@moat/service';
import {
  createListener,
  ensureTlsCertificate,
  hopReceived,
  listenerReplies,
  MessageTooBig,
  type Reply,
  type Transaction,
} from '@moat/smtp-listener';
import { poolFor, RelayError, RelayTransaction, type Reservation } from '@moat/smtp-relay';
import { relayCheck } from './checks/relay.js';
import { postgreyLine } from './greylisting/engine.js';
import { setupGreylisting } from './greylisting/setup.js';
import { startPolicyServer } from './policy-server.js';
import { greylistReplies } from './replies.js';

const RESERVED = 'filter connection';
const X_GREYLIST = 'x-greylist';

function reservationOf(state: Record<string, unknown>): Reservation | undefined {
  return state[RESERVED] as Reservation | undefined;
}

interface RcptOutcome {
  why?: string;
  err?: string;
  key?: string;
  keyedOn?: string | undefined;
  entry?: string | undefined;
  reply?: Reply;
}

/**
 * The fields of a RCPT decision's log line, built as one object literal (pino leaves out the
 * undefined ones): pino walks the object key by key, and on an object built by spreading
 * ({ ...who, key }) that walk measured 3 us more per line, a tenth of a decision's CPU.
 */
function rcptLog(tx: Transaction, to: string, o: RcptOutcome) {
  return {
    id: tx.id,
    client: tx.client.address,
    from: tx.mailFrom.address,
    to,
    why: o.why,
    err: o.err,
    key: o.key,
    keyedOn: o.keyedOn,
    entry: o.entry,
    reply: o.reply && `${o.reply.code} ${o.reply.lines[0]}`,
  };
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
  const grey = await setupGreylisting(config, logger);
  const policy = c.policyListen ? await startPolicyServer(config, grey.engine, logger) : undefined;
  const filter = poolFor('filter', c.next, c, config.hostname, logger);
  const fail = (tx: Transaction, stage: string, err: unknown): Reply => {
    if (err instanceof RelayError) {
      // the client's side too: who was refused, for which message, and with what reply
      logger.warn(
        {
          id: tx.id,
          client: tx.client.address,
          from: tx.mailFrom.address,
          to: tx.rcptTo.length ? tx.rcptTo.map((r) => r.address) : undefined,
          stage,
          next: err.target,
          err: err.message,
          reply: `${err.reply.code} ${err.reply.lines.join(' / ')}`,
        },
        'filter failed',
      );
      return err.reply;
    }
    throw err;
  };

  const ourNetworks = new NetworkList(config.mynetworks);
  const listener = await createListener({
    service: 'greylist',
    hostname: config.hostname,
    listen: c.listen,
    peers: c.peers,
    proxyPeers: c.proxyPeers,
    xforward: false,
    messageSizeLimit: c.messageSizeLimit,
    recipientLimit: c.recipientLimit,
    errorLimit: c.hardErrorLimit,
    maxClients: c.maxClients,
    idleTimeoutMs: c.idleTimeout,
    tls: { key: tls.key, cert: tls.cert },
    handover: config.screen.handover
      ? { socketPath: c.handoverSocket, clientLimit: config.screen.clientConnectionCountLimit }
      : undefined,
    logger,
    handlers: {
      async mailFrom(tx) {
        if (c.enabled) grey.engine.prefetch(tx.client.address, tx.client.name);
        try {
          tx.state[RESERVED] = await RelayTransaction.reserve(filter);
          return undefined;
        } catch (err) {
          return fail(tx, 'MAIL', err);
        }
      },
      async rcptTo(rcpt, tx) {
        const to = rcpt.address;
        const verdict = relayCheck(to, domains);
        if (!verdict.ok) {
          const r = greylistReplies.relayDenied(to);
          logger.info(rcptLog(tx, to, { why: verdict.why, reply: r }), 'NOQUEUE: reject: RCPT');
          return r;
        }
        if (grey.recipients.current.unknown(to, verdict.domain)) {
          const r = greylistReplies.unknownUser(to);
          logger.info(rcptLog(tx, to, { reply: r }), 'NOQUEUE: reject: RCPT');
          return r;
        }
        if (c.enabled && ourNetworks.has(tx.client.address)) {
          // Postfix's order: permit_mynetworks comes before the policy check; our own clients are
          // never greylisted
          logger.info(
            rcptLog(tx, to, {}),
            `action=pass, reason=mynetworks, client_address=${tx.client.address}`,
          );
        } else if (c.enabled) {
          const request = {
            clientAddress: tx.client.address,
            clientName: tx.client.name,
            helo: tx.client.helo,
            sender: tx.mailFrom.address || '',
            recipient: to,
          };
          const d = await grey.engine.decide(request);
          const line = postgreyLine(d, request);
          if (d.action === 'tempfail') {
            const r = greylistReplies.storeFailed(to);
            logger.warn(rcptLog(tx, to, { err: d.error, reply: r }), line);
            return r;
          }
          if (d.action === 'greylist') {
            const r = greylistReplies.greylisted(to, d.text);
            logger.info(rcptLog(tx, to, { key: d.key, keyedOn: d.keyedOn, reply: r }), line);
            return r;
          }
          logger.info(rcptLog(tx, to, { key: d.key, keyedOn: d.keyedOn, entry: d.entry }), line);
          if (d.header && tx.state[X_GREYLIST] === undefined) tx.state[X_GREYLIST] = d.header;
        }
        return undefined;
      },
      async data(body, tx, session, info) {
        const reserved = reservationOf(tx.state);
        delete tx.state[RESERVED];
        const client = tx.client;
        const rcpt = tx.rcptTo.map((r) => r.address);
        // the message's one line, whatever became of it
        const line = (reply: Reply, more: Record<string, unknown>) => ({
          id: tx.id,
          client: client.address,
          helo: client.helo,
          from: tx.mailFrom.address,
          to: rcpt,
          size: info.bytes(),
          ...more,
          reply: `${reply.code} ${reply.lines.join(' / ')}`,
        });
        if (!reserved) {
          body.resume();
          return fail(tx, 'DATA', new RelayError('lost', 'no transaction', 'filter'));
        }
        const received = hopReceived(tx, {
          hostname: config.hostname,
          service: 'greylist',
          with: client.proto,
        });
        const header = tx.state[X_GREYLIST] as string | undefined;
        const prefix = header ? Buffer.concat([received, Buffer.from(`${header}\r\n`, 'utf8')]) : received;
        let r: Reply;
        try {
          r = await RelayTransaction.send(
            filter,
            { ...client, ident: tx.id },
            { mailFrom: tx.mailFrom, rcptTo: tx.rcptTo },
            () => body,
            prefix,
            reserved,
          );
        } catch (err) {
          if (err instanceof MessageTooBig || body.errored instanceof MessageTooBig) {
            // an outcome the client is told of (the listener answers 552), not our failure: one line with
            // the envelope and the reply, as for any message not accepted, and no error with a stack trace
            const r = listenerReplies.messageTooBig();
            logger.info(
              line(r, { why: `larger than messageSizeLimit (${c.messageSizeLimit})` }),
              'not accepted',
            );
            return r;
          }
          if (!(err instanceof RelayError)) {
            logger.info(
              { id: tx.id, client: client.address, err: (err as Error).message },
              'message not received in full; filter transaction aborted',
            );
            // the client left mid-DATA: logged above, once; no second line as an error with a stack
            if (body.errored) return listenerReplies.internalError();
            throw err;
          }
          r = fail(tx, 'DATA', err);
        }
        logger.info(
          line(r, { bareLineEndings: info.bareLineEndings() || undefined, tls: session.secure || undefined }),
          r.code < 300 ? 'accepted' : 'not accepted',
        );
        return r;
      },
      reset(tx) {
        // the transaction ended before DATA: nothing was sent on the reserved connection
        const reserved = reservationOf(tx.state);
        delete tx.state[RESERVED];
        if (reserved) RelayTransaction.unreserve(filter, reserved);
      },
    },
  });
  logger.info({ listen: `${listener.address.host}:${listener.address.port}` }, 'listening');
  return {
    async stop() {
      await policy?.close();
      await listener.close();
      filter.close();
      await grey.close();
    },
  };
}
