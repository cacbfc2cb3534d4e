/**
 * policy-server: Postfix's policy delegation protocol on greylist.policyListen, so a site that keeps a
 * real Postfix can swap Postgrey for moat (`check_policy_service inet:127.0.0.1:10040` after
 * reject_unauth_destination and reject_unlisted_recipient). Exports startPolicyServer and
 * answerPolicy (the pure request -> action mapping, for tests).
 *
 * Protocol (SMTPD_POLICY_README): `name=value` lines, an empty line ends a request; the answer is
 * `action=...` and an empty line; the connection stays open for the next request, answers in order.
 * Unknown attributes are ignored, a repeated one keeps the last value. Answers, as Postgrey's:
 *   - a required attribute (client_address, sender, recipient) missing, or a state other than RCPT:
 *     DUNNO;
 *   - greylisted: `DEFER_IF_PERMIT <text>` (Postfix answers 450), text prefixed with 4.2.0 when
 *     Postfix sends etrn_domain (Postgrey's Exchange workaround);
 *   - a triplet's first pass: `PREPEND X-Greylist: ...`, once per message (the last 20 `instance`
 *     values are remembered); any other pass: DUNNO;
 *   - the store failing: `451 4.3.0 Temporary lookup failure` (never a pass, never a 5xx).
 * On trouble (not smtpd_access_policy, a request over 64 KB or 200 lines) nothing is answered: the
 * connection is logged and closed, as the README asks. Only policyPeers may connect.
 */
import net from 'node:net';
import { type MoatConfig, NetworkList, parseHostPort } from '@moat/config';
import type { Logger } from '@moat/log';
import { type GreylistEngine, postgreyLine, type Request } from './greylisting/engine.js';

const MAX_BYTES = 64 * 1024;
const MAX_LINES = 200;
const INSTANCES = 20;

/** The action for one request; `seen` holds recent instances that already got a PREPEND. */
export async function answerPolicy(
  attrs: ReadonlyMap<string, string>,
  engine: GreylistEngine,
  seen: string[],
  logger?: Logger,
): Promise<string> {
  const state = attrs.get('protocol_state');
  if (state !== undefined && state.toUpperCase() !== 'RCPT') return 'DUNNO';
  const given = attrs.get('client_address');
  const clientAddress = given !== undefined && /^ipv6:/i.test(given) ? given.slice(5) : given;
  const sender = attrs.get('sender');
  const recipient = attrs.get('recipient');
  if (!clientAddress || sender === undefined || !recipient || net.isIP(clientAddress) === 0) {
    logger?.warn(
      { attrs: Object.fromEntries(attrs) },
      'policy request without client_address, sender or recipient: DUNNO',
    );
    return 'DUNNO';
  }
  const request: Request = {
    clientAddress,
    clientName: attrs.get('client_name') || 'unknown',
    helo: attrs.get('helo_name') ?? '',
    sender,
    recipient,
    lookupName: false,
  };
  const d = await engine.decide(request);
  const line = postgreyLine(d, request);
  const queueId = attrs.get('queue_id') || undefined;
  const instance = attrs.get('instance');
  if (d.action === 'tempfail') {
    logger?.warn({ queueId, instance, err: d.error }, line);
    return '451 4.3.0 Temporary lookup failure';
  }
  if (d.action === 'greylist') {
    logger?.info({ queueId, instance, key: d.key, keyedOn: d.keyedOn }, line);
    const text = attrs.has('etrn_domain') && !/^\d/.test(d.text) ? `4.2.0 ${d.text}` : d.text;
    return `DEFER_IF_PERMIT ${text}`;
  }
  logger?.info({ queueId, instance, key: d.key, keyedOn: d.keyedOn, entry: d.entry }, line);
  if (d.header) {
    if (instance === undefined || !seen.includes(instance)) {
      if (instance !== undefined) {
        seen.push(instance);
        if (seen.length > INSTANCES) seen.shift();
      }
      return `PREPEND ${d.header}`;
    }
  }
  return 'DUNNO';
}

export async function startPolicyServer(
  config: Readonly<MoatConfig>,
  engine: GreylistEngine,
  logger: Logger,
): Promise<{ address: net.AddressInfo; close(): Promise<void> }> {
  const peers = new NetworkList(config.greylist.policyPeers);
  const log = logger.child({ port: 'policy' });
  const seen: string[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    const peer = socket.remoteAddress ?? '';
    if (!peers.has(peer)) {
      log.warn({ peer }, 'policy connection from outside policyPeers refused');
      socket.destroy();
      return;
    }
    sockets.add(socket);
    socket.setNoDelay(true);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    let rest = '';
    let attrs = new Map<string, string>();
    let lines = 0;
    let bytes = 0;
    // answers leave in request order, each as soon as it and those before it are decided; those
    // decided together leave in one write
    const queue: { action: string | undefined }[] = [];
    let writeQueued = false;
    const write = () => {
      writeQueued = false;
      let out = '';
      let n = 0;
      while (n < queue.length && queue[n]!.action !== undefined) out += `action=${queue[n++]!.action}\n\n`;
      queue.splice(0, n);
      if (out !== '' && !socket.destroyed) socket.write(out);
    };
    const answered = (slot: { action: string | undefined }, action: string) => {
      slot.action = action;
      if (!writeQueued && queue[0] === slot) {
        writeQueued = true;
        queueMicrotask(write);
      }
    };
    const trouble = (why: string) => {
      log.warn({ peer, why }, 'policy connection closed without an answer');
      socket.destroy();
    };
    socket.on('data', (chunk: Buffer) => {
      const text = rest === '' ? chunk.toString('latin1') : rest + chunk.toString('latin1');
      let start = 0;
      let nl: number;
      while ((nl = text.indexOf('\n', start)) !== -1) {
        const from = start;
        const end = nl > from && text.charCodeAt(nl - 1) === 13 ? nl - 1 : nl;
        start = nl + 1;
        bytes += end - from + 1;
        if (end > from) {
          if (++lines > MAX_LINES || bytes > MAX_BYTES) return trouble('request too long');
          const eq = text.indexOf('=', from);
          if (eq > from && eq < end) attrs.set(text.slice(from, eq), text.slice(eq + 1, end));
          continue;
        }
        const request = attrs;
        attrs = new Map();
        lines = 0;
        bytes = 0;
        if (request.get('request') !== 'smtpd_access_policy')
          return trouble(`request=${request.get('request') ?? '(none)'}`);
        const slot: { action: string | undefined } = { action: undefined };
        queue.push(slot);
        answerPolicy(request, engine, seen, log).then(
          (action) => answered(slot, action),
          (err: unknown) => {
            log.error({ err: (err as Error).message }, 'policy request failed');
            answered(slot, '451 4.3.0 Temporary lookup failure');
          },
        );
      }
      rest = start === text.length ? '' : text.slice(start);
      if (rest.length > MAX_BYTES) trouble('line too long');
    });
  });
  const hp = parseHostPort(config.greylist.policyListen)!;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(hp.port, hp.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address() as net.AddressInfo;
  log.info({ policyListen: `${address.address}:${address.port}` }, 'policy server listening');
  return {
    address,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.end();
        server.close(() => resolve());
        setTimeout(() => {
          for (const s of sockets) s.destroy();
        }, 1000).unref();
      }),
  };
}
