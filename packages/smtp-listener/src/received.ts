/**
 * received: queue ids and the Received: header every hop adds (RFC 5321 section 4.4, Postfix's layout).
 *
 *   Received: from helo.example (mail.example [192.0.2.1])
 *           by mx.example.test (moat-greylist) with ESMTPS id 0MH2K1XQ7A3F
 *           for <user@example.test>; Wed, 25 Nov 2026 12:00:00 +0000
 *
 * The "from" part always names the real client (from PROXY or XFORWARD), as Postfix's after-filter smtpd
 * does with XFORWARD, and the "by" part names the hop, so the delivered message shows the path.
 */
import crypto from 'node:crypto';

export interface ClientInfo {
  /** The real client's address (PROXY or XFORWARD ADDR), never a hop's. */
  address: string;
  port: number;
  /** Verified client host name, or "unknown". */
  name: string;
  /** HELO/EHLO argument, or "" when none was given. */
  helo: string;
  /** SMTP, ESMTP, ESMTPS, ... as the first hop saw it. */
  proto: string;
  /** Queue id at the previous hop (XFORWARD IDENT), for following one message through the logs. */
  ident?: string | undefined;
}

/** XFORWARD's "no value" words, as Postfix sends them: [UNAVAILABLE] and [TEMPUNAVAIL]. */
export const UNAVAILABLE = /^\[?(UNAVAILABLE|TEMPUNAVAIL)\]?$/i;

/**
 * The real client of a hop's session: the previous hop's XFORWARD attributes where it sent them, else
 * what this hop saw itself (the socket's peer, or PROXY's client at the first hop). Both listener
 * engines build it here.
 */
export function forwardedClient(
  xforward: ReadonlyMap<string, unknown> | undefined,
  seen: { address: string; port: number; helo: string; proto: string },
): ClientInfo {
  const get = (k: string): string | undefined => {
    const v = xforward?.get(k);
    if (v === undefined || v === null || v === false || v === '') return undefined;
    const text = String(v);
    return UNAVAILABLE.test(text) ? undefined : text;
  };
  const name = get('NAME') ?? '';
  return {
    address: get('ADDR') ?? seen.address,
    port: Number(get('PORT') ?? seen.port) || 0,
    name: name && !name.startsWith('[') ? name : 'unknown',
    helo: get('HELO') ?? seen.helo,
    proto: get('PROTO') ?? seen.proto,
    ident: get('IDENT'),
  };
}

let counter = crypto.randomInt(0, 36 ** 3);

/** A 12-character id, time-ordered, unique across processes with high probability: 0MH2K1XQ7A3F. */
export function newQueueId(): string {
  counter = (counter + 1) % 36 ** 3;
  const time = Date.now().toString(36).toUpperCase().padStart(9, '0').slice(-9);
  return time + counter.toString(36).toUpperCase().padStart(3, '0');
}

const DAYS = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

/** RFC 5322 date-time in UTC: "Wed, 25 Nov 2026 12:00:00 +0000". */
export function rfc5322Date(d = new Date()): string {
  const p = (n: number) => String(n).padStart(2, '0');
  return `${DAYS[d.getUTCDay()]}, ${d.getUTCDate()} ${MONTHS[d.getUTCMonth()]} ${d.getUTCFullYear()} ${p(d.getUTCHours())}:${p(d.getUTCMinutes())}:${p(d.getUTCSeconds())} +0000`;
}

function clean(value: string): string {
  // values come from the client: keep them on one line and out of the comment syntax
  // eslint-disable-next-line no-control-regex -- control characters are exactly what is removed
  return value.replace(/[\x00-\x1f\x7f()\\]/g, '?').slice(0, 255);
}

export interface ReceivedOptions {
  client: ClientInfo;
  /** This hop's host name. */
  by: string;
  /** This hop's service name, shown as (moat-<service>). */
  service: string;
  /** Protocol this hop received with: ESMTP for internal hops, the client's for the first hop. */
  with: string;
  id: string;
  recipients: readonly string[];
  date?: Date;
}

/** The whole header field, folded, ending in CRLF. */
export function receivedHeader(o: ReceivedOptions): Buffer {
  const c = o.client;
  const addr = c.address.includes(':') ? `IPv6:${c.address}` : c.address;
  const helo = c.helo ? clean(c.helo) : `[${c.address}]`;
  const forPart = o.recipients.length === 1 ? `\r\n\tfor <${clean(o.recipients[0]!)}>` : '';
  return Buffer.from(
    `Received: from ${helo} (${clean(c.name || 'unknown')} [${addr}])\r\n` +
      `\tby ${o.by} (moat-${o.service}) with ${clean(o.with)} id ${o.id}${forPart};\r\n` +
      `\t${rfc5322Date(o.date)}\r\n`,
    'utf8',
  );
}

/** The Received header of a hop for one transaction: the real client, this hop, its queue id. */
export function hopReceived(
  tx: { id: string; client: ClientInfo; rcptTo: readonly { address: string }[] },
  hop: { hostname: string; service: string; with?: string },
): Buffer {
  return receivedHeader({
    client: tx.client,
    by: hop.hostname,
    service: hop.service,
    with: hop.with ?? 'ESMTP',
    id: tx.id,
    recipients: tx.rcptTo.map((r) => r.address),
  });
}
