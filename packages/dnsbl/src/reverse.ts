/**
 * reverse: the DNSBL query name for a client address. IPv4: octets reversed (1.2.3.4 -> 4.3.2.1);
 * IPv6: 32 nibbles reversed (RFC 5782, `::` expanded); an IPv4-mapped IPv6 address (::ffff:1.2.3.4)
 * is treated as the IPv4 address it carries. Exports normalizeIp (brackets and zone id dropped,
 * mapped -> IPv4, IPv6 in canonical lower-case form), reverseName and expandIPv6. A string that is
 * not an IP address throws.
 */
import net from 'node:net';

/** Eight 16-bit groups; throws when ip is not IPv6. */
export function expandIPv6(ip: string): number[] {
  if (net.isIPv6(ip) === false) throw new Error(`not an IPv6 address: ${JSON.stringify(ip)}`);
  let text = ip.toLowerCase();
  const tail: number[] = [];
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (v4) {
    const o = v4[1]!.split('.').map(Number) as [number, number, number, number];
    tail.push((o[0] << 8) | o[1], (o[2] << 8) | o[3]);
    text = text.slice(0, -v4[1]!.length);
    text = text.endsWith('::') ? text : text.replace(/:$/, '');
  }
  const hex = (part: string) => (part === '' ? [] : part.split(':').map((g) => parseInt(g, 16)));
  const halves = text.split('::');
  const head = hex(halves[0]!);
  const rest = [...(halves.length === 2 ? hex(halves[1]!) : []), ...tail];
  const zeros = halves.length === 2 ? 8 - head.length - rest.length : 0;
  return [...head, ...new Array<number>(zeros).fill(0), ...rest];
}

function strip(ip: string): string {
  let s = ip.trim();
  if (s.startsWith('[') && s.endsWith(']')) s = s.slice(1, -1);
  if (/^ipv6:/i.test(s)) s = s.slice(5);
  const pct = s.indexOf('%');
  return pct === -1 ? s : s.slice(0, pct);
}

/** IPv4 as is; IPv4-mapped IPv6 as IPv4; other IPv6 canonical (lower case, `::` compressed). */
export function normalizeIp(ip: string): string {
  const s = strip(ip);
  const kind = net.isIP(s);
  if (kind === 4) return s;
  if (kind !== 6) throw new Error(`not an IP address: ${JSON.stringify(ip)}`);
  const g = expandIPv6(s);
  if (g.slice(0, 5).every((x) => x === 0) && g[5] === 0xffff) {
    return [g[6]! >> 8, g[6]! & 0xff, g[7]! >> 8, g[7]! & 0xff].join('.');
  }
  return new URL(`http://[${s}]/`).hostname.slice(1, -1);
}

/** The name to prepend to a zone: `4.3.2.1` or 32 dot-separated nibbles. */
export function reverseName(ip: string): string {
  const n = normalizeIp(ip);
  if (net.isIPv4(n)) return n.split('.').reverse().join('.');
  return expandIPv6(n)
    .map((g) => g.toString(16).padStart(4, '0'))
    .join('')
    .split('')
    .reverse()
    .join('.');
}
