/**
 * reply-map: postscreen's `postscreen_dnsbl_reply_map`: a secret zone name (a Spamhaus DQS key in it)
 * shown to clients and written to logs under a public name. Input as `secret.zone=public.name` entries
 * (comma or newline separated; texthash-style `secret.zone public.name` lines too; `#` comments), an
 * array of such entries, or a plain object/Map. Exports parseReplyMap and publicName; a bad entry throws
 * DnsblConfigError naming it.
 */
import { checkDomain, DnsblConfigError } from './sites.js';

export type ReplyMap = ReadonlyMap<string, string>;
export type ReplyMapInput =
  string | readonly string[] | Readonly<Record<string, string>> | ReadonlyMap<string, string> | undefined;

export function parseReplyMap(input: ReplyMapInput): ReplyMap {
  const map = new Map<string, string>();
  if (input === undefined) return map;
  const add = (key: string, value: string, entry: string) => {
    const v = value.trim();
    if (v === '' || /\s/.test(v))
      throw new DnsblConfigError(`bad dnsbl reply map entry "${entry}": bad public name`);
    map.set(checkDomain(key.trim(), entry, 'dnsbl reply map entry'), v);
  };
  if (typeof input === 'string' || Array.isArray(input)) {
    const lines = (typeof input === 'string' ? [input] : (input as readonly string[]))
      .flatMap((t) => t.split(/[\n,]/))
      .map((l) => l.replace(/#.*$/, '').trim())
      .filter((l) => l !== '');
    for (const line of lines) {
      const m = /^([^=\s]+)\s*(?:=|\s)\s*(\S+)$/.exec(line);
      if (!m)
        throw new DnsblConfigError(`bad dnsbl reply map entry "${line}": expected secret.zone=public.name`);
      add(m[1]!, m[2]!, line);
    }
    return map;
  }
  const entries = input instanceof Map ? [...input.entries()] : Object.entries(input);
  for (const [k, v] of entries) add(String(k), String(v), `${String(k)}=${String(v)}`);
  return map;
}

/** The name to show for a zone: its reply-map value, or the zone itself. */
export function publicName(map: ReplyMap, zone: string): string {
  return map.get(zone.toLowerCase()) ?? zone;
}
