/**
 * service: screen on port 25/2525, postscreen's place. For now every client passes: its live connection
 * is spliced to greylist behind a PROXY header at once (the tests before the greeting come in their
 * own issue). Logs CONNECT and DISCONNECT in postscreen's words.
 */
import net from 'node:net';
import { normalizeIp, parseHostPort, type MoatConfig } from '@moat/config';
import type { Logger } from '@moat/log';
import type { RunningService } from '@moat/service';
import { splice } from './splice.js';

export async function startScreen(config: Readonly<MoatConfig>, logger: Logger): Promise<RunningService> {
  const c = config.screen;
  const hp = parseHostPort(c.listen)!;
  const open = new Set<net.Socket>();
  const server = net.createServer({ noDelay: true }, (client) => {
    open.add(client);
    const from = `[${normalizeIp(client.remoteAddress ?? '')}]:${client.remotePort}`;
    const to = `[${normalizeIp(client.localAddress ?? '')}]:${client.localPort}`;
    const started = Date.now();
    logger.info(
      { client: normalizeIp(client.remoteAddress ?? ''), port: client.remotePort },
      `CONNECT from ${from} to ${to}`,
    );
    client.on('error', () => undefined);
    void splice(client, { targets: c.next, connectTimeoutMs: c.nextConnectTimeout, logger }).then(
      (outcome) => {
        open.delete(client);
        const secs = ((Date.now() - started) / 1000).toFixed(3);
        logger.info({ client: normalizeIp(client.remoteAddress ?? ''), outcome, secs }, `DISCONNECT ${from}`);
      },
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: hp.host, port: hp.port, backlog: 1024 }, () => resolve());
  });
  const addr = server.address() as net.AddressInfo;
  logger.info({ listen: `${addr.address}:${addr.port}` }, 'listening');
  return {
    async stop() {
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        // spliced sessions get the same grace period as the SMTP listeners, then go
        setTimeout(() => {
          for (const s of open) s.destroy();
        }, 30_000).unref();
        if (open.size === 0) resolve();
      });
    },
  };
}
