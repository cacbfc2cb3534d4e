/**
 * splice: hands a client's live connection to greylist behind a PROXY v1 header and from then on is a
 * byte pipe both ways (no-delay on both sockets). A replica that refuses is skipped for the next one;
 * when none answers within nextConnectTimeout the client gets 421 4.3.2 and is disconnected.
 */
import net from 'node:net';
import { parseHostPort } from '@moat/config';
import type { Logger } from '@moat/log';
import { proxyV1Header } from './proxy-protocol.js';

export const screenReplies = {
  /** postscreen's text when no smtpd process can take the connection. */
  serverBusy: '421 4.3.2 All server ports are busy',
} as const;

export interface SpliceOptions {
  targets: readonly string[];
  connectTimeoutMs: number;
  logger: Logger;
}

let rr = 0;

function connectOnce(target: string, timeoutMs: number): Promise<net.Socket> {
  const hp = parseHostPort(target)!;
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: hp.host, port: hp.port });
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`connect to ${target} timed out`));
    }, timeoutMs);
    sock.once('connect', () => {
      clearTimeout(timer);
      sock.removeAllListeners('error');
      resolve(sock);
    });
    sock.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

export async function connectUpstream(o: SpliceOptions): Promise<net.Socket> {
  let last: Error | undefined;
  for (let i = 0; i < o.targets.length; i++) {
    const target = o.targets[rr++ % o.targets.length]!;
    try {
      return await connectOnce(target, o.connectTimeoutMs);
    } catch (err) {
      last = err as Error;
      o.logger.warn({ next: target, err: last.message }, 'greylist connection failed');
    }
  }
  throw last ?? new Error('no greylist address');
}

/** Splices `client` to a new upstream connection; resolves when both sides are closed. */
export async function splice(client: net.Socket, o: SpliceOptions): Promise<'spliced' | 'busy'> {
  client.setNoDelay(true);
  client.pause();
  let upstream: net.Socket;
  try {
    upstream = await connectUpstream(o);
  } catch {
    client.end(`${screenReplies.serverBusy}\r\n`);
    return 'busy';
  }
  if (client.destroyed) {
    upstream.destroy();
    return 'spliced';
  }
  upstream.setNoDelay(true);
  upstream.write(
    proxyV1Header(
      { address: client.remoteAddress ?? '0.0.0.0', port: client.remotePort ?? 0 },
      { address: client.localAddress ?? '0.0.0.0', port: client.localPort ?? 0 },
    ),
  );
  const closeBoth = () => {
    client.destroy();
    upstream.destroy();
  };
  client.on('error', closeBoth);
  upstream.on('error', closeBoth);
  client.pipe(upstream);
  upstream.pipe(client);
  client.resume();
  await new Promise<void>((resolve) => {
    let open = 2;
    const done = () => {
      if (--open === 0) resolve();
    };
    client.once('close', done);
    upstream.once('close', done);
  });
  return 'spliced';
}
