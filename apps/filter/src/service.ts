/**
 * service: filter on 10024 (amavisd-new's place between 10024 and 10025), answering in the sender's
 * session. Per message: spool (memory up to filter.spoolMemoryLimit, a file beyond), then four checks
 * in parallel, each reading the spool on its own (clamd INSTREAM and spamd REPORT with their own
 * timeouts, banned files and bad headers from one streaming MIME walk), then one verdict (verdict.ts):
 *  - quarantine first when the destiny says so (the copy with its verdict to 10026; only after its 250
 *    does the client get an answer, else 451);
 *  - pass: forwarded to delivery with XFORWARD and the added header fields, delivery's reply relayed
 *    (so a 250 here means delivery has it);
 *  - reject 554 5.7.0 / discard 250 2.7.0 / tempfail 451: our own reply, nothing forwarded (the
 *    downstream transaction is only opened for a pass, so there is none to abort).
 * One log line per message: client, envelope, size, each check's outcome and time, category, destiny,
 * reply.
 */
import path from 'node:path';
import type { Readable } from 'node:stream';
import { ConfigError, internalSizeLimit, type MoatConfig } from '@moat/config';
import type { Logger } from '@moat/log';
import type { RunningService } from '@moat/service';
import { createListener, hopReceived, type Reply, type Transaction } from '@moat/smtp-listener';
import { RelayError, poolFor, RelayTransaction, type RelayPool } from '@moat/smtp-relay';
import { MessageSpool, removeOrphans, SPOOL_NAME } from '@moat/spool';
import { SpamdClient } from 'spamassassin-client';
import { badHeaderCheck } from './checks/badHeaders.js';
import { bannedCheck, parseBannedRules } from './checks/banned.js';
import { spamCheck } from './checks/spam.js';
import type { ScanInput } from './checks/types.js';
import { ClamdClient, parseClamd, virusCheck } from './checks/virus.js';
import { type Head, headOf, messageIdOf, readHead, rewriteHead } from './message.js';
import { walkMime } from './mime.js';
import { formatDestiny, Policy } from './policy.js';
import { filterReplies } from './replies.js';
import { CATEGORY_WORDS, decide, type Decision, type Results } from './verdict.js';

const fmt = (r: Reply) => `${r.code} ${r.lines.join(' / ')}`;

/** The forwarded copy: the rewritten header section, then the spool from the end of the old one. */
async function* forwardedBody(
  spool: MessageSpool,
  head: Head,
  subjectTag: string | undefined,
): AsyncGenerator<Buffer> {
  const inMemory = spool.buffer();
  if (!head.complete) {
    yield* inMemory ? [inMemory] : (spool.stream() as AsyncIterable<Buffer>);
    return;
  }
  yield rewriteHead(head.head, { subjectTag });
  if (head.bodyOffset < spool.size)
    yield* inMemory
      ? [inMemory.subarray(head.bodyOffset)]
      : (spool.stream({ start: head.bodyOffset }) as AsyncIterable<Buffer>);
}

async function relay(
  pool: RelayPool,
  tx: Transaction,
  rcpt: readonly string[],
  body: () => Readable | AsyncIterable<Buffer>,
  prefix: Buffer,
  logger: Logger,
  what: string,
): Promise<Reply> {
  try {
    return await RelayTransaction.send(
      pool,
      { ...tx.client, ident: tx.id },
      { mailFrom: tx.mailFrom, rcptTo: tx.rcptTo.filter((r) => rcpt.includes(r.address)) },
      body,
      prefix,
    );
  } catch (err) {
    if (!(err instanceof RelayError)) throw err;
    logger.warn({ id: tx.id, next: err.target, err: err.message }, `${what} failed`);
    return err.reply;
  }
}

export async function startFilter(config: Readonly<MoatConfig>, logger: Logger): Promise<RunningService> {
  const c = config.filter;
  for (const key of ['clamd', 'spamd'] as const) {
    if (c[key] === 'managed') {
      throw new ConfigError(
        [
          `filter.${key}: "managed" is only for npm start (the launcher runs managed daemons); ` +
            `set it (MOAT_FILTER_${key.toUpperCase()}) to host:port or a socket path`,
        ],
        'filter',
      );
    }
  }
  const spoolDir = path.join(config.dataDir, 'filter');
  // spill files of a filter that was killed mid-message (its client got no 250): message content, and
  // disk nobody else would free
  const orphans = await removeOrphans(spoolDir, SPOOL_NAME);
  if (orphans) logger.info({ dir: spoolDir, files: orphans }, 'removed spool files left by a stopped filter');
  const delivery = poolFor('delivery', c.next, c, config.hostname, logger);
  const quarantine = poolFor('quarantine', c.quarantine, c, config.hostname, logger);
  const clamd = new ClamdClient(parseClamd(c.clamd));
  const spamd =
    c.spamd === 'off'
      ? undefined
      : new SpamdClient(c.spamd, {
          timeoutMs: c.spamdTimeout,
          connectTimeoutMs: Math.min(5000, c.spamdTimeout),
        });
  if (!spamd) logger.warn('filter.spamd is off: no message is scored for spam');
  const rules = parseBannedRules(c.bannedFiles);
  const policy = new Policy(c, config.domains);
  const walkOptions = {
    archiveMaxDepth: c.archiveMaxDepth,
    archiveMaxSize: c.archiveMaxSize,
    archiveMaxFiles: c.archiveMaxFiles,
    archiveMaxExpansion: c.archiveMaxExpansion,
  };
  if (c.scannerFailure === 'pass')
    logger.warn('filter.scannerFailure is pass: mail is delivered unscanned (tagged) when a scanner fails');

  async function scan(spool: MessageSpool): Promise<{ results: Results; head: Head }> {
    const input: ScanInput = { size: spool.size, stream: () => spool.stream() };
    const mime = walkMime(spool.stream(), walkOptions);
    const inMemory = spool.buffer();
    // in memory (the common case): no stream to read and then abandon, which costs Node an AbortError
    const headP = (inMemory ? Promise.resolve(headOf(inMemory)) : readHead(spool.stream())).catch(
      (): Head => ({
        head: Buffer.alloc(0),
        bodyOffset: 0,
        complete: false,
      }),
    );
    const [virus, spam, banned, [badHeader, head]] = await Promise.all([
      virusCheck(input, { clamd, timeoutMs: c.clamdTimeout, encryptedArchives: c.encryptedArchives }),
      spamCheck(input, { spamd, maxSize: c.spamMaxSize }),
      bannedCheck(mime, rules),
      headP.then(async (h) => [await badHeaderCheck(h, mime), h] as const),
    ]);
    return { results: { virus, spam, banned, badHeader }, head };
  }

  /** Quarantines and delivers as decided; `quarantined` says whether quarantine took its copy. */
  async function act(
    tx: Transaction,
    spool: MessageSpool,
    d: Decision,
    head: Head,
  ): Promise<{ r: Reply; quarantined: boolean; quarantineId?: string }> {
    const received = hopReceived(tx, { hostname: config.hostname, service: 'filter' });
    let q: Reply | undefined;
    if (d.quarantineTo.length) {
      q = await relay(
        quarantine,
        tx,
        d.quarantineTo,
        () => spool.stream(),
        Buffer.concat([Buffer.from(d.quarantineHeaders, 'latin1'), received]),
        logger,
        'quarantine',
      );
      if (q.code >= 300) {
        logger.warn({ id: tx.id, reply: fmt(q) }, 'quarantine refused the message');
        return { r: filterReplies.quarantineFailed(tx.id), quarantined: false };
      }
    }
    const quarantined = d.quarantineTo.length > 0;
    // quarantine's id for its copy ("250 2.0.0 Ok: quarantined as <id>"), as amavis logs "quarantine: ..."
    const quarantineId = q && /quarantined as (\S+)/.exec(q.lines[0] ?? '')?.[1];
    if (d.action !== 'pass') return { r: d.reply!, quarantined, quarantineId };
    const r = await relay(
      delivery,
      tx,
      d.deliverTo,
      () => forwardedBody(spool, head, d.subjectTag),
      Buffer.concat([Buffer.from(d.headers, 'latin1'), received]),
      logger,
      'delivery',
    );
    return { r, quarantined, quarantineId };
  }

  const listener = await createListener({
    service: 'filter',
    hostname: config.hostname,
    listen: c.listen,
    peers: c.peers,
    xforward: true,
    messageSizeLimit: internalSizeLimit(config),
    logger,
    handlers: {
      async data(body, tx, session): Promise<Reply> {
        const client = tx.client;
        const started = performance.now();
        let spool: MessageSpool;
        try {
          spool = await MessageSpool.from(body, { dir: spoolDir, memoryLimit: c.spoolMemoryLimit });
        } catch (err) {
          // the body's own error (the previous hop aborted it: its client went over the size limit or
          // left; the listener answers if anyone is there): logged once, here, not as an error with a
          // stack. Otherwise the spool could not be written (the disk is full): that is the operator's
          if ((body.errored && err === body.errored) || session.closed) {
            logger.info(
              { id: tx.id, ident: client.ident, client: client.address, err: (err as Error).message },
              'message not received in full; nothing forwarded',
            );
            return filterReplies.clientGone(tx.id);
          }
          logger.error(
            { id: tx.id, client: client.address, dir: spoolDir, err: (err as Error).message },
            'spool write failed; nothing forwarded',
          );
          return filterReplies.spoolFailed(tx.id);
        }
        try {
          const spooledMs = Math.round(performance.now() - started);
          const { results, head } = await scan(spool);
          const scannedMs = Math.round(performance.now() - started);
          const rcpt = tx.rcptTo.map((r) => r.address);
          const d = decide(
            results,
            rcpt.map((a) => policy.for(a)),
            {
              id: tx.id,
              hostname: config.hostname,
              spamSubjectTag: c.spamSubjectTag,
              uncheckedSubjectTag: c.uncheckedSubjectTag,
              dsnCutoffLevel: c.dsnCutoffLevel,
            },
          );
          if (session.closed) {
            // the previous hop gave up waiting (its nextTimeout) or went away during the scan: its client
            // got a 4xx and will send the message again, so forwarding it now would deliver it twice
            logger.warn(
              { id: tx.id, client: client.address, scanMs: Math.round(performance.now() - started) },
              'the previous hop left during the scan; nothing forwarded',
            );
            return filterReplies.clientGone(tx.id);
          }
          const { r, quarantined, quarantineId } = await act(tx, spool, d, head);
          const actedMs = Math.round(performance.now() - started);
          const outcome =
            r.code >= 400
              ? r.code >= 500
                ? 'rejected'
                : 'deferred'
              : d.action === 'pass'
                ? 'passed'
                : 'discarded';
          const checks = Object.fromEntries(
            Object.values(results).map((x) => [x.check, { outcome: x.outcome, detail: x.detail, ms: x.ms }]),
          );
          // a check that could not run (a scanner down, too slow, a limit hit) is something to act on,
          // whatever became of the message: the message's one line goes out at warn, where alerts look
          const failedCheck = Object.values(results).some((x) => x.outcome === 'error');
          logger[failedCheck ? 'warn' : 'info'](
            {
              id: tx.id,
              ident: client.ident,
              client: client.address,
              helo: client.helo,
              from: tx.mailFrom.address,
              to: rcpt,
              messageId: messageIdOf(head.head),
              size: spool.size,
              checks,
              score: results.spam.data.score,
              category: CATEGORY_WORDS[d.category],
              categories: d.categories.map((x) => CATEGORY_WORDS[x]),
              destiny: d.recipients.map(
                (v) => `${v.address}: ${formatDestiny(v.destiny)}${v.bypass ? ' (bypass)' : ''}`,
              ),
              result: `${d.action === 'pass' && r.code < 300 ? 'Passed' : 'Blocked'} ${CATEGORY_WORDS[d.category]}`,
              delivered: d.action === 'pass' && r.code < 300 ? d.deliverTo : [],
              quarantined: quarantined ? d.quarantineTo : [],
              quarantineId,
              ...(d.dsnSuppressed ? { dsn: 'suppressed' } : {}),
              ...(c.scannerFailure === 'pass' ? { scannerFailure: 'pass' } : {}),
              spoolMs: spooledMs,
              scanMs: scannedMs - spooledMs,
              relayMs: actedMs - scannedMs,
              ms: Math.round(performance.now() - started),
              reply: fmt(r),
            },
            outcome,
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
      quarantine.close();
      clamd.close();
    },
  };
}
