/**
 * whitelist: Postgrey's static whitelists. Exports compileClientWhitelist, compileRecipientWhitelist,
 * defaultWhitelistFile and the ClientWhitelist / RecipientWhitelist matchers.
 *
 * Client entries (postgrey_whitelist_clients syntax):
 *   example.com        the client's verified host name is example.com or ends in .example.com
 *   /^mail\d+\.x\.com$/ a regular expression on the host name (case-insensitive)
 *   192.0.2.1          one address; 192.0.2 and 192.0 are /24 and /16 prefixes
 *   192.0.2.0/24, 2001:db8::/32   CIDR networks
 * Host-name entries need a name: on the MX smtpd that is the forward-confirmed reverse name found by
 * rdns.ts (greylist.reverseLookup), on the policy port Postfix's client_name. A client without a
 * verified name ("unknown") matches only address entries.
 *
 * Recipient entries (postgrey_whitelist_recipients syntax):
 *   example.test       the recipient's domain or a subdomain of it
 *   postmaster@        that local part in any domain (with any +extension)
 *   abuse@example.test that address (with any +extension)
 *   /regexp/           a regular expression on the whole address
 */
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import { NetworkList } from '@moat/config';

/** The maintained list of well-known senders that retry from pools, shipped with moat. */
export function defaultWhitelistFile(): string {
  return fileURLToPath(new URL('../../lists/whitelist_clients', import.meta.url));
}

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

export interface ClientWhitelist {
  /** The entry that matched, or undefined. */
  matchName(name: string): string | undefined;
  matchAddress(address: string): string | undefined;
  /** True when some entry needs a host name (a reverse lookup is worth doing). */
  readonly hasNames: boolean;
}

export function compileClientWhitelist(entries: readonly string[]): ClientWhitelist {
  const names: { entry: string; re: RegExp }[] = [];
  const nets: { entry: string; list: NetworkList }[] = [];
  const suffixes = new Map<string, string>();
  for (const raw of entries) {
    const e = raw.trim();
    const re = /^\/(\S+)\/$/.exec(e);
    let cidr: string | undefined;
    if (re) {
      names.push({ entry: e, re: new RegExp(re[1]!, 'i') });
      continue;
    }
    if (/^\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}(?:\/\d{1,2})?$/.test(e)) cidr = e;
    else if (/^\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(e)) cidr = `${e}.0/24`;
    else if (/^\d{1,3}\.\d{1,3}$/.test(e)) cidr = `${e}.0.0/16`;
    else if (/^\d{1,3}$/.test(e))
      cidr = `${e}.0.0.0/8`; // Postgrey: one octet is a prefix too
    else if (/^[0-9a-f:]*:[0-9a-f:.]*(?:\/\d{1,3})?$/i.test(e)) cidr = e;
    if (cidr !== undefined) {
      try {
        nets.push({ entry: e, list: new NetworkList([cidr]) });
      } catch {
        // not an address after all: ignored, as Postgrey ignores what it cannot parse
      }
      continue;
    }
    if (/^\S+$/.test(e)) suffixes.set(e.toLowerCase().replace(/^\.+|\.$/g, ''), e);
  }
  return {
    hasNames: names.length > 0 || suffixes.size > 0,
    matchName(name) {
      if (!name || name === 'unknown') return undefined;
      const host = name.toLowerCase().replace(/\.$/, '');
      // walk the host name's parent domains: a lookup per label, whatever the size of the list
      for (let d = host; ;) {
        const hit = suffixes.get(d);
        if (hit !== undefined) return hit;
        const dot = d.indexOf('.');
        if (dot < 0) break;
        d = d.slice(dot + 1);
      }
      return names.find((n) => n.re.test(host))?.entry;
    },
    matchAddress(address) {
      if (net.isIP(address.replace(/^\[|\]$/g, '')) === 0) return undefined;
      return nets.find((n) => n.list.has(address))?.entry;
    },
  };
}

export interface RecipientWhitelist {
  match(recipient: string): string | undefined;
}

export function compileRecipientWhitelist(entries: readonly string[]): RecipientWhitelist {
  const rules: { entry: string; re: RegExp }[] = [];
  for (const raw of entries) {
    const e = raw.trim();
    let m: RegExpExecArray | null;
    if ((m = /^\/(\S+)\/$/.exec(e))) rules.push({ entry: e, re: new RegExp(m[1]!, 'i') });
    else if ((m = /^(\S+)@(\S+)$/.exec(e)))
      rules.push({ entry: e, re: new RegExp(`^${escapeRe(m[1]!)}(?:\\+.*)?@${escapeRe(m[2]!)}$`, 'i') });
    else if ((m = /^(\S+)@$/.exec(e)))
      rules.push({ entry: e, re: new RegExp(`^${escapeRe(m[1]!)}(?:\\+.*)?@`, 'i') });
    else if (/^\S+$/.test(e)) rules.push({ entry: e, re: new RegExp(`@(?:.*\\.)?${escapeRe(e)}$`, 'i') });
  }
  return {
    match: (recipient) => rules.find((r) => r.re.test(recipient))?.entry,
  };
}
