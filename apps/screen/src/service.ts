/**
 * service: screen on port 25/2525, postscreen's place. Builds the process-wide parts once (access
 * list, limits, the pass cache on the reputation store, the DNSBL checker with its self-tests) and
 * runs session.ts for every accepted connection. Logs `listening` when ready; stop() closes the
 * listener, gives open sessions the SMTP listeners' 30 s grace and 5 s more (a spliced session is
 * greylist's: stopped together, its 421 at the end of its own grace must reach the client before screen
 * cuts the pipe), and closes the store.
 * Exports startScreen and screenContext.
 */
import net from 'node:net';
import { NetworkList, parseHostPort, type MoatConfig } from '@moat/config';
import type { Logger } from '@moat/log';
import type { RunningService } from '@moat/service';
import { AccessList } from './access.js';
import { PassCache } from './cache.js';
import { createDnsbl } from './dnsbl.js';
import { Limits } from './limits.js';
import { handleClient, type ScreenContext } from './session.js';

/** The SMTP listeners' close timeout (30 s) and a margin, so the next hop's 421 comes first. */
const STOP_GRACE_MS = 35_000;

export async function screenContext(config: Readonly<MoatConfig>, logger: Logger): Promise<ScreenContext> {
  const c = config.screen;
  const banner =
    c.greetBanner === undefined || c.greetBanner === '' ? `${config.hostname} ESMTP` : c.greetBanner;
  const deep: ScreenContext['deep'] = [];
  if (c.pipeliningEnable)
    deep.push({ test: 'pipelining', action: c.pipeliningAction, ttlMs: c.pipeliningTtl });
  if (c.nonSmtpCommandEnable) {
    deep.push({ test: 'non_smtp_command', action: c.nonSmtpCommandAction, ttlMs: c.nonSmtpCommandTtl });
  }
  if (c.bareNewlineEnable)
    deep.push({ test: 'bare_newline', action: c.bareNewlineAction, ttlMs: c.bareNewlineTtl });
  const access = new AccessList(c.accessList, config.mynetworks, (msg, fields) =>
    logger.warn(fields ?? {}, msg),
  );
  const dnsbl = createDnsbl(config, logger);
  const cache = await PassCache.open({
    store: config.store,
    dataDir: config.dataDir,
    retentionMs: c.cacheRetention,
    cleanupIntervalMs: c.cacheCleanupInterval,
    logger,
  });
  return {
    hostname: config.hostname,
    teaser: c.greetBanner === undefined ? banner : c.greetBanner,
    banner,
    greetWaitMs: c.greetWait,
    greetAction: c.greetAction,
    greetTtlMs: c.greetTtl,
    ...(dnsbl ? { dnsbl } : {}),
    dnsblAction: c.dnsblAction,
    dnsblMinTtlMs: c.dnsblMinTtl,
    accessAction: c.accessAction,
    deep,
    forbidden: new Set(c.forbiddenCommands.map((x) => x.toUpperCase())),
    commandCountLimit: c.commandCountLimit,
    commandTimeLimitMs: c.commandTimeLimit,
    ...(c.upstreamProxyProtocol === 'haproxy'
      ? { proxy: { peers: new NetworkList(c.upstreamProxyPeers), timeoutMs: c.upstreamProxyTimeout } }
      : {}),
    access,
    limits: new Limits(c.clientConnectionCountLimit, c.preQueueLimit),
    cache,
    splice: {
      targets: c.next,
      handover: c.handover ? config.greylist.handoverSocket : undefined,
      connectTimeoutMs: c.nextConnectTimeout,
      logger,
    },
    logger,
  };
}

export async function startScreen(config: Readonly<MoatConfig>, logger: Logger): Promise<RunningService> {
  const hp = parseHostPort(config.screen.listen)!;
  const ctx = await screenContext(config, logger);
  const open = new Set<net.Socket>();
  const server = net.createServer({ noDelay: true, pauseOnConnect: true }, (client) => {
    open.add(client);
    void handleClient(ctx, client)
      .catch((err: unknown) => {
        logger.error({ err }, 'session failed');
        client.destroy();
      })
      .finally(() => open.delete(client));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: hp.host, port: hp.port, backlog: 4096 }, () => resolve());
  });
  const addr = server.address() as net.AddressInfo;
  logger.info(
    {
      listen: `${addr.address}:${addr.port}`,
      store: ctx.cache.kind,
      dnsbl: ctx.dnsbl?.checker.zones.map((z) => ctx.dnsbl!.checker.publicName(z)) ?? [],
      deep: ctx.deep.map((d) => d.test),
    },
    'listening',
  );
  return {
    async stop() {
      ctx.dnsbl?.stop();
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        // sessions get the same grace period as the SMTP listeners, then go
        setTimeout(() => {
          for (const s of open) s.destroy();
        }, STOP_GRACE_MS).unref();
        if (open.size === 0) resolve();
      });
      await ctx.cache.close();
    },
  };
}
