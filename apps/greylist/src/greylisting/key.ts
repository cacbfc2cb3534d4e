/**
 * key: the greylisting triplet, crafted as Postgrey crafts it. Exports normaliseSender, clientNetwork,
 * tripletKey, spfTripletKey and recipientDomain.
 *
 *   key = lower-case "<client network>/<normalised sender>/<recipient>"
 *
 * - client network: the client's IPv4 /24 or IPv6 /64 network address (lookupBy: subnet, prefix
 *   lengths configurable) or the exact address (lookupBy: host);
 * - sender: BATV `prvs=tag=local` -> `local`, `+extension` stripped, every all-digit word -> `#`
 *   (VERP), as Postgrey's do_sender_substitutions;
 * - recipient: as sent, lower-cased.
 * With SPF keying the network part is "spf:<domain>", so every address of a pool the domain
 * authorises shares one triplet. Pure functions, no I/O.
 */
import net from 'node:net';
import { normalizeIp } from '@moat/config';

export interface KeyOptions {
  lookupBy: 'subnet' | 'host';
  ipv4Cidr: number;
  ipv6Cidr: number;
}

/** Postgrey's do_sender_substitutions, plus lower case. The null sender stays empty. */
export function normaliseSender(address: string): string {
  const addr = address.toLowerCase();
  const at = addr.indexOf('@');
  if (at < 0) return addr;
  let user = addr.slice(0, at);
  const domain = addr.slice(at + 1);
  if (user.startsWith('prvs=')) {
    const parts = user.split('=');
    if (parts.length === 3) {
      const tag = /^[0-9a-z]{10}/;
      // BATV is prvs=tag=local, sometimes prvs=local=tag: keep the part that is not the tag
      user =
        tag.test(parts[1]!) && !tag.test(parts[2]!)
          ? parts[2]!
          : tag.test(parts[2]!) && !tag.test(parts[1]!)
            ? parts[1]!
            : parts[2]!;
    }
  }
  user = user.replace(/\+.*/, '').replace(/\b\d+\b/g, '#');
  return `${user}@${domain}`;
}

/** A valid dotted quad as a number (a loop over the digits: this runs once per decision). */
function ipv4ToInt(ip: string): number {
  let n = 0;
  let octet = 0;
  for (let i = 0; i < ip.length; i++) {
    const c = ip.charCodeAt(i);
    if (c === 46) {
      n = n * 256 + octet;
      octet = 0;
    } else octet = octet * 10 + (c - 48);
  }
  return n * 256 + octet;
}

function ipv6Groups(ip: string): number[] {
  let text = ip;
  // an embedded IPv4 tail (::ffff:1.2.3.4 that normalizeIp did not map, 64:ff9b::1.2.3.4)
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (v4) {
    const n = ipv4ToInt(v4[1]!);
    text = text.slice(0, -v4[1]!.length) + `${(n >>> 16).toString(16)}:${(n & 0xffff).toString(16)}`;
  }
  const [head, tail] = text.split('::') as [string, string | undefined];
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const fill = tail === undefined ? [] : Array<string>(8 - h.length - t.length).fill('0');
  return [...h, ...fill, ...t].map((g) => parseInt(g || '0', 16));
}

/** The client's network address (Postgrey's do_client_substitutions), or the address itself. */
export function clientNetwork(address: string, o: KeyOptions): string {
  const ip = normalizeIp(address);
  const kind = net.isIP(ip);
  if (kind === 0 || o.lookupBy === 'host') return ip;
  if (kind === 4) {
    const bits = o.ipv4Cidr;
    const mask = bits === 0 ? 0 : (0xffffffff << (32 - bits)) >>> 0;
    const n = (ipv4ToInt(ip) & mask) >>> 0;
    return `${n >>> 24}.${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255}`;
  }
  const groups = ipv6Groups(ip);
  const out = groups.map((g, i) => {
    const keep = Math.max(0, Math.min(16, o.ipv6Cidr - i * 16));
    return keep === 0 ? 0 : g & ((0xffff << (16 - keep)) & 0xffff);
  });
  // compressed, as NetAddr::IP prints it: the longest run of zero groups becomes ::
  let best = -1;
  let bestLen = 0;
  for (let i = 0; i < 8;) {
    if (out[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && out[j] === 0) j++;
    if (j - i > bestLen) [best, bestLen] = [i, j - i];
    i = j;
  }
  const hex = out.map((g) => g.toString(16));
  if (bestLen < 2) return hex.join(':');
  return `${hex.slice(0, best).join(':')}::${hex.slice(best + bestLen).join(':')}`;
}

/** The recipient's domain (for %r), lower case; '' for a bare local part. */
export function recipientDomain(recipient: string): string {
  const at = recipient.lastIndexOf('@');
  return at < 0 ? '' : recipient.slice(at + 1).toLowerCase();
}

export function tripletKey(network: string, sender: string, recipient: string): string {
  return `${network}/${normaliseSender(sender)}/${recipient}`.toLowerCase();
}

/** The triplet of an SPF-authorised sender: keyed on the domain, not on the client network. */
export function spfTripletKey(domain: string, sender: string, recipient: string): string {
  return tripletKey(`spf:${domain}`, sender, recipient);
}
