/**
 * splice: hands a client's live connection to greylist behind a PROXY v1 header naming the real client,
 * and from then on is a byte pipe both ways (no-delay on both sockets). A replica that refuses is
 * skipped for the next one; when none answers within nextConnectTimeout the client gets 421 4.3.2 and
 * is disconnected. Bytes screen already read (a pregreet under `ignore`) go first.
 *
 * A client nobody needs to watch is handed over instead when `handover` names greylist's socket: the
 * connection itself goes to greylist (@moat/handover), as postscreen passes clients to smtpd, and
 * screen is out of the path (no second TCP session, no bytes relayed). When greylist cannot take it
 * (no socket there: another host or container; its queue full) the client is spliced as below.
 *
 * With a DeepWatcher, both directions pass through it until it is done (first RCPT, DATA, or every
 * test decided), then the sockets are piped directly. On a violation the session's `onViolation`
 * decides: keep forwarding (ignore), or take the client back (drop/enforce: the upstream is closed and
 * splice resolves 'taken'). Exports splice, connectUpstream and SpliceOptions.
 */
import type net from 'node:net';
import { connect } from 'node:net';
import { parseHostPort } from '@moat/config';
import { handOver } from '@moat/handover';
import type { Logger } from '@moat/log';
import type { ClientResult, DeepWatcher } from './deep.js';
import { sendAndClose } from './engine.js';
import { proxyV1Header } from './proxy-protocol.js';
import { replies } from './replies.js';

export interface SpliceOptions {
  targets: readonly string[];
  /** greylist's handover socket; undefined = always splice. */
  handover?: string | undefined;
  connectTimeoutMs: number;
  logger: Logger;
}

export interface Endpoint {
  address: string;
  port: number;
}

export interface SpliceSession {
  client: net.Socket;
  source: Endpoint;
  destination: Endpoint;
  /** Already read from the client; sent to greylist first. */
  initial?: Buffer;
  /** Counted against the per-client connection limit (greylist keeps counting a handed-over client). */
  counted: boolean;
  watcher?: DeepWatcher;
  /** 'stop': the session takes the client back (the chunk is not forwarded). */
  onDeep?: (r: ClientResult) => 'forward' | 'stop';
}

let rr = 0;

function connectOnce(target: string, timeoutMs: number): Promise<net.Socket> {
  const hp = parseHostPort(target)!;
  return new Promise((resolve, reject) => {
    const sock = connect({ host: hp.host, port: hp.port, noDelay: true });
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

/** Whether greylist took the client; on false the caller splices it (the reason is logged once per kind). */
function tryHandover(s: SpliceSession, at: string, logger: Logger): boolean {
  const client = s.client;
  // what Node already read from the client goes along (the stream is paused, so nothing more is read)
  const buffered: Buffer[] = s.initial?.length ? [s.initial] : [];
  for (let b: Buffer | null; (b = client.read() as Buffer | null) !== null;) buffered.push(b);
  const initial = buffered.length ? Buffer.concat(buffered) : undefined;
  try {
    handOver(at, client, {
      source: s.source,
      destination: s.destination,
      counted: s.counted,
      ...(initial ? { initial } : {}),
    });
    return true;
  } catch (err) {
    if (initial) s.initial = initial;
    const code = String((err as { code?: unknown }).code ?? 'error');
    if (!handoverFailures.has(code)) {
      handoverFailures.add(code);
      logger.warn(
        { handoverSocket: at, code, err: (err as Error).message },
        'handover to greylist failed; splicing (logged once per kind)',
      );
    }
    return false;
  }
}

const handoverFailures = new Set<string>();

/**
 * Hands the client over, or splices it to a new upstream connection. Resolves 'handed' at once, or
 * when both sides of the splice are closed.
 */
export async function splice(
  s: SpliceSession,
  o: SpliceOptions,
): Promise<'handed' | 'spliced' | 'busy' | 'taken'> {
  const client = s.client;
  client.setNoDelay(true);
  client.pause();
  if (o.handover && (!s.watcher || s.watcher.done) && tryHandover(s, o.handover, o.logger)) return 'handed';
  let upstream: net.Socket;
  try {
    upstream = await connectUpstream(o);
  } catch {
    sendAndClose(client, `${replies.serverBusy}\r\n`);
    return 'busy';
  }
  if (client.destroyed) {
    upstream.destroy();
    return 'spliced';
  }
  upstream.write(proxyV1Header(s.source, s.destination));
  const closeBoth = () => {
    client.destroy();
    upstream.destroy();
  };
  client.on('error', closeBoth);
  upstream.on('error', closeBoth);
  return new Promise((resolve) => {
    let open = 2;
    let taken = false;
    const done = () => {
      if (--open === 0) resolve(taken ? 'taken' : 'spliced');
    };
    const pipeDirect = () => {
      client.pipe(upstream);
      upstream.pipe(client);
    };
    client.once('close', done);
    upstream.once('close', done);
    const w = s.watcher;
    if (!w || w.done) {
      if (s.initial?.length) upstream.write(s.initial);
      pipeDirect();
      client.resume();
      return;
    }
    // watched: by hand, with back-pressure, until the watcher is done
    const fromServer = (chunk: Buffer) => {
      w.server(chunk);
      if (!client.write(chunk)) {
        upstream.pause();
        client.once('drain', () => upstream.resume());
      }
    };
    const fromClient = (chunk: Buffer) => {
      const r = w.client(chunk);
      if ((r.violations.length > 0 || r.passed.length > 0) && s.onDeep?.(r) === 'stop') {
        taken = true;
        client.removeListener('data', fromClient);
        upstream.removeListener('data', fromServer);
        client.removeListener('error', closeBoth);
        client.removeListener('close', done);
        client.pause();
        upstream.destroy();
        if (open === 2) open = 1;
        return;
      }
      if (!upstream.write(chunk)) {
        client.pause();
        upstream.once('drain', () => client.resume());
      }
      if (r.done) {
        client.removeListener('data', fromClient);
        upstream.removeListener('data', fromServer);
        pipeDirect();
      }
    };
    upstream.on('data', fromServer);
    client.on('data', fromClient);
    if (s.initial?.length) fromClient(s.initial);
    if (!taken) client.resume();
  });
}
