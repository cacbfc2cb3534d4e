/**
 * relay: relay protection (Postfix's reject_unauth_destination with allow_untrusted_routing = no).
 * A recipient is accepted only when its real domain is local, judged after the tricks SMTP allows:
 *
 *   - source routes (<@hop1,@hop2:user@domain>): ignored, the domain after them counts;
 *   - quoted local parts ("user@elsewhere"@local) and sender-specified routing in the local part
 *     (user%elsewhere@local, elsewhere!user@local): refused, because a downstream MTA may route on them;
 *   - address literals (user@[192.0.2.1]) and trailing dots: never local / ignored;
 *   - the bare <postmaster> that RFC 5321 requires every server to accept: local.
 */
export type RelayVerdict =
  { ok: true; domain: string } | { ok: false; why: 'not local' | 'routing' | 'literal' };

export function unquoteLocal(local: string): string {
  const m = /^"((?:[^"\\]|\\.)*)"$/.exec(local);
  return m ? m[1]!.replace(/\\(.)/g, '$1') : local;
}

export function relayCheck(address: string, domains: ReadonlySet<string>): RelayVerdict {
  const addr = address.replace(/^@[^:]*:/, '');
  if (addr.toLowerCase() === 'postmaster') return { ok: true, domain: '' };
  const at = addr.lastIndexOf('@');
  if (at <= 0) return { ok: false, why: 'not local' };
  const local = unquoteLocal(addr.slice(0, at));
  const domain = addr
    .slice(at + 1)
    .toLowerCase()
    .replace(/\.$/, '');
  if (domain.startsWith('[')) return { ok: false, why: 'literal' };
  if (/[@%!]/.test(local)) return { ok: false, why: 'routing' };
  if (!domains.has(domain)) return { ok: false, why: 'not local' };
  return { ok: true, domain };
}
