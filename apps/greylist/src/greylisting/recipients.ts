/**
 * recipients: the known-recipient table (Postfix's local_recipient_maps with reject_unlisted_recipient).
 * Exports compileRecipients and KnownRecipients.
 *
 * Entries are addresses (`user@example.test`) and catch-alls (`@example.test`), from the top-level
 * `recipients` list and `recipientsFiles` (reloaded on change, see watched-list.ts). When no entry
 * and no file is configured the table is off and every address in a local domain is accepted.
 * Matching is case-insensitive; `user+anything@domain` is known when `user@domain` is (the usual
 * recipient_delimiter '+'); `postmaster@<local domain>` is always known (RFC 5321 section 4.5.1).
 * Only local domains are judged here: relay protection has already refused the others.
 */
import { unquoteLocal } from '../checks/relay.js';

export interface KnownRecipients {
  /** True when the table is on and the address is not in it. */
  unknown(address: string, domain: string): boolean;
}

export function compileRecipients(entries: readonly string[], enabled: boolean): KnownRecipients {
  const addresses = new Set<string>();
  const catchAll = new Set<string>();
  for (const e of entries) {
    const v = e.trim().toLowerCase();
    if (v.startsWith('@')) catchAll.add(v.slice(1));
    else if (v.includes('@')) addresses.add(v);
  }
  return {
    unknown(address, domain) {
      if (!enabled || domain === '') return false;
      // judged as relay protection and delivery read it: past a source route, the local part unquoted
      const a = address.replace(/^@[^:]*:/, '').toLowerCase();
      const at = a.lastIndexOf('@');
      const local = unquoteLocal(a.slice(0, at));
      if (catchAll.has(domain) || addresses.has(`${local}@${domain}`) || local === 'postmaster') return false;
      const plus = local.indexOf('+');
      return !(plus > 0 && addresses.has(`${local.slice(0, plus)}@${domain}`));
    },
  };
}
