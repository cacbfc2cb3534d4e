/**
 * sites: postscreen's `postscreen_dnsbl_sites` syntax, verbatim. Entries `domain[=filter][*weight]`,
 * separated by commas and/or white space. A filter is `d.d.d.d` where each d is a number 0..255 or
 * `[...]` holding `;`-separated numbers and `n..m` ranges (`127.0.0.[2..11]`, `127.0.[0..255].[1;3]`).
 * No filter = any answer counts; no weight = 1; a negative weight allowlists. Several entries for the
 * same zone stay separate: each adds its weight once when ANY answer record matches it.
 * Exports parseSites, parseFilter, matchesFilter, zonesOf and the Site/Filter types; parse errors
 * throw DnsblConfigError naming the bad entry.
 */

/** One octet of a filter: the inclusive ranges it accepts. */
export type OctetRanges = readonly (readonly [number, number])[];
/** Four octets. */
export type Filter = readonly [OctetRanges, OctetRanges, OctetRanges, OctetRanges];

export interface Site {
  /** The entry as written (normalised: lower case, no trailing dot). */
  readonly text: string;
  /** The DNS zone queried, e.g. zen.spamhaus.org. */
  readonly zone: string;
  /** Undefined: any answer counts. */
  readonly filter?: Filter;
  readonly weight: number;
}

/** A bad dnsblSites or dnsblReplyMap entry; the message names it. */
export class DnsblConfigError extends Error {
  override readonly name = 'DnsblConfigError';
}

const LABEL = /^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$/;

/** Lower case, no trailing dot; throws when it is not a domain name. */
export function checkDomain(domain: string, entry: string, what = 'dnsbl site'): string {
  const d = domain.toLowerCase().replace(/\.$/, '');
  if (d === '' || d.length > 253 || !d.split('.').every((l) => LABEL.test(l))) {
    throw new DnsblConfigError(`bad ${what} "${entry}": "${domain}" is not a domain name`);
  }
  return d;
}

function octetNumber(s: string, entry: string): number {
  if (!/^\d{1,3}$/.test(s) || Number(s) > 255) {
    throw new DnsblConfigError(`bad dnsbl site "${entry}": "${s}" is not a number from 0 to 255`);
  }
  return Number(s);
}

function parseOctet(s: string, entry: string): OctetRanges {
  if (!s.startsWith('[')) {
    const n = octetNumber(s, entry);
    return [[n, n]];
  }
  if (!s.endsWith(']') || s.length < 3) {
    throw new DnsblConfigError(`bad dnsbl site "${entry}": "${s}" must be [n;n..m;...]`);
  }
  return s
    .slice(1, -1)
    .split(';')
    .map((part): [number, number] => {
      const range = /^(\d+)\.\.(\d+)$/.exec(part);
      if (!range) {
        const n = octetNumber(part, entry);
        return [n, n];
      }
      const lo = octetNumber(range[1]!, entry);
      const hi = octetNumber(range[2]!, entry);
      if (lo > hi) throw new DnsblConfigError(`bad dnsbl site "${entry}": range "${part}" runs backwards`);
      return [lo, hi];
    });
}

/**
 * `d.d.d.d`; the dots inside `[n..m]` belong to the range, so octets are split on dots outside brackets.
 * `entry` is only for the error message.
 */
export function parseFilter(text: string, entry = text): Filter {
  const octets: string[] = [];
  let cur = '';
  let depth = 0;
  for (const ch of text) {
    if (ch === '[') depth++;
    if (ch === ']') depth--;
    if (depth < 0 || depth > 1) throw new DnsblConfigError(`bad dnsbl site "${entry}": unbalanced [ ]`);
    if (ch === '.' && depth === 0) {
      octets.push(cur);
      cur = '';
    } else cur += ch;
  }
  if (depth !== 0) throw new DnsblConfigError(`bad dnsbl site "${entry}": unbalanced [ ]`);
  octets.push(cur);
  if (octets.length !== 4) {
    throw new DnsblConfigError(`bad dnsbl site "${entry}": filter "${text}" must have four octets`);
  }
  const [a, b, c, d] = octets.map((o) => parseOctet(o, entry)) as [
    OctetRanges,
    OctetRanges,
    OctetRanges,
    OctetRanges,
  ];
  return [a, b, c, d];
}

/** True when the IPv4 answer matches the filter (always, without one). */
export function matchesFilter(filter: Filter | undefined, address: string): boolean {
  if (!filter) return true;
  const parts = address.split('.');
  if (parts.length !== 4) return false;
  return parts.every((p, i) => {
    if (!/^\d{1,3}$/.test(p)) return false;
    const n = Number(p);
    return filter[i]!.some(([lo, hi]) => n >= lo && n <= hi);
  });
}

function parseEntry(entry: string): Site {
  let rest = entry;
  let weight = 1;
  const star = rest.lastIndexOf('*');
  if (star !== -1) {
    const w = rest.slice(star + 1);
    if (!/^[+-]?\d{1,9}$/.test(w)) {
      throw new DnsblConfigError(`bad dnsbl site "${entry}": weight "${w}" is not a whole number`);
    }
    weight = Number(w);
    rest = rest.slice(0, star);
  }
  const eq = rest.indexOf('=');
  const domain = eq === -1 ? rest : rest.slice(0, eq);
  const filterText = eq === -1 ? undefined : rest.slice(eq + 1);
  const zone = checkDomain(domain, entry);
  if (filterText === '') throw new DnsblConfigError(`bad dnsbl site "${entry}": empty filter after "="`);
  const filter = filterText === undefined ? undefined : parseFilter(filterText, entry);
  const text = `${zone}${filterText === undefined ? '' : `=${filterText}`}${star === -1 ? '' : `*${weight}`}`;
  return filter ? { text, zone, filter, weight } : { text, zone, weight };
}

/** Parses the whole list; an array's items may each hold several entries. Empty input: no sites. */
export function parseSites(input: string | readonly string[]): Site[] {
  const text = typeof input === 'string' ? input : input.join(',');
  return text
    .split(/[\s,]+/)
    .filter((e) => e !== '')
    .map(parseEntry);
}

/** The distinct zones, in the order they first appear. */
export function zonesOf(sites: readonly Site[]): string[] {
  return [...new Set(sites.map((s) => s.zone))];
}
