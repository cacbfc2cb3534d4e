/**
 * engine: the greylisting decision for one recipient, shared by the MX smtpd (RCPT) and the policy
 * port. Exports GreylistEngine, Decision, Request, postgreyLine and createEngine's options.
 *
 * Order (Postgrey's, with moat's additions marked +):
 *   client whitelist (host name, then address) -> recipient whitelist -> + screen trust (DNSWL trust
 *   or chosen screen passes in the shared store) -> client AWL -> + SPF keying -> triplet.
 * Trust, AWL and triplet are one store step (greylistLookup: one transaction or one Lua script); with
 * SPF keying the triplet is a second step, after the SPF check the trusted and AWL clients never need.
 * Each answer carries Postgrey's log words (`action=greylist, reason=new`, `action=pass, reason=triplet
 * found, delay=N`, `reason=client AWL`, ...) and, on a triplet's first pass, the X-Greylist header.
 * Any StoreError gives action 'tempfail' (the caller answers 451 4.3.0): never a pass, never a 5xx.
 * The clock is injectable (`now`) for tests.
 */
import { normalizeIp } from '@moat/config';
import type { Logger } from '@moat/log';
import { type GreylistQuery, type GreylistResult, type ReputationStore, StoreError } from '@moat/reputation';
import { rfc5322Date } from '@moat/smtp-listener';
import { clientNetwork, type KeyOptions, recipientDomain, spfTripletKey, tripletKey } from './key.js';
import type { ReverseNames } from './rdns.js';
import type { SpfChecker } from './spf.js';
import type { ClientWhitelist, RecipientWhitelist } from './whitelist.js';

export const VERSION = '0.1.0';

export interface EngineSettings extends KeyOptions {
  hostname: string;
  delay: number;
  retryWindow: number;
  maxAge: number;
  autoWhitelistClients: number;
  text: string;
  helpUrl: string;
  xGreylistHeader: string;
  trustScreen: boolean;
  trustScreenTests: readonly string[];
}

export interface EngineDeps {
  store: ReputationStore;
  clients: { readonly current: ClientWhitelist };
  recipients: { readonly current: RecipientWhitelist };
  /** Reverse names for host-name entries when the caller has no client name (MX smtpd). */
  rdns?: ReverseNames | undefined;
  spf?: SpfChecker | undefined;
  logger?: Logger;
  clock?: () => number;
}

export interface Request {
  clientAddress: string;
  /** Verified client name ('unknown' or undefined when none: then rdns is asked, if configured). */
  clientName?: string | undefined;
  helo?: string | undefined;
  sender: string;
  recipient: string;
  /** False where the name given is already the verified one (Postfix's client_name): no reverse lookup. */
  lookupName?: boolean;
}

export type PassReason =
  | 'client whitelist'
  | 'recipient whitelist'
  | 'client trusted (dnswl)'
  | 'client trusted (screen)'
  | 'client AWL'
  | 'triplet found';

export type Decision =
  | {
      action: 'pass';
      reason: PassReason;
      /** The whitelist entry that matched, for the log. */
      entry?: string;
      key?: string;
      /** Seconds the triplet waited, on its first pass only. */
      delay?: number;
      /** The X-Greylist header line (no CRLF), on a triplet's first pass only. */
      header?: string;
      /** 'spf:<domain>' when the triplet was keyed on an SPF-authorised domain. */
      keyedOn?: string;
      clientName: string;
    }
  | {
      action: 'greylist';
      reason: string;
      secondsLeft: number;
      /** The greylist text with %s and %r filled in. */
      text: string;
      key: string;
      keyedOn?: string;
      clientName: string;
    }
  | { action: 'tempfail'; reason: 'store error'; error: string; clientName: string };

/** Postgrey's log line: `action=pass, reason=triplet found, delay=12, client_name=..., ...`. */
export function postgreyLine(d: Decision, r: Request): string {
  const delay = d.action === 'pass' && d.delay !== undefined ? `, delay=${d.delay}` : '';
  return (
    `action=${d.action}, reason=${d.reason}${delay}, client_name=${d.clientName}, ` +
    `client_address=${r.clientAddress}, sender=${r.sender}, recipient=${r.recipient}`
  );
}

export class GreylistEngine {
  readonly #s: EngineSettings;
  readonly #d: EngineDeps;
  readonly #clock: () => number;

  constructor(settings: EngineSettings, deps: EngineDeps) {
    this.#s = settings;
    this.#d = deps;
    this.#clock = deps.clock ?? Date.now;
  }

  get store(): ReputationStore {
    return this.#d.store;
  }

  /** Starts the reverse lookup early (at MAIL FROM) so RCPT rarely waits for it. */
  prefetch(clientAddress: string, clientName?: string): void {
    if (this.#needsName(clientName)) void this.#d.rdns!.name(normalizeIp(clientAddress));
  }

  #needsName(name: string | undefined): boolean {
    return (!name || name === 'unknown') && this.#d.rdns !== undefined && this.#d.clients.current.hasNames;
  }

  /** The 451 text: greylist.text or "Greylisted, see <helpUrl>", %s seconds left, %r recipient domain. */
  greylistText(secondsLeft: number, recipient: string): string {
    const template = this.#s.text || `Greylisted, see ${this.#s.helpUrl}`;
    const domain = recipientDomain(recipient);
    return template.replace(/%s/g, String(secondsLeft)).replace(/%r/g, domain);
  }

  header(delay: number, now: number): string | undefined {
    if (!this.#s.xGreylistHeader) return undefined;
    return this.#s.xGreylistHeader
      .replace(/%t/g, String(delay))
      .replace(/%v/g, VERSION)
      .replace(/%h/g, this.#s.hostname)
      .replace(/%d/g, rfc5322Date(new Date(now)));
  }

  /** The key of a triplet as the engine would craft it without SPF (for `approve` and tests). */
  networkKey(clientAddress: string, sender: string, recipient: string): string {
    return tripletKey(clientNetwork(clientAddress, this.#s), sender, recipient);
  }

  async decide(r: Request): Promise<Decision> {
    const ip = normalizeIp(r.clientAddress);
    const recipient = r.recipient.toLowerCase();
    let clientName = r.clientName && r.clientName !== 'unknown' ? r.clientName : 'unknown';
    const clients = this.#d.clients.current;

    // 1. static whitelists: client name, client address, recipient
    if (r.lookupName !== false && this.#needsName(r.clientName)) {
      // a cached name (every recipient after the first, the lookup started at MAIL) costs no await
      const rdns = this.#d.rdns!;
      clientName = rdns.cached(ip) ?? (await rdns.name(ip));
    }
    const byName = clients.matchName(clientName);
    if (byName !== undefined)
      return { action: 'pass', reason: 'client whitelist', entry: byName, clientName };
    const byAddress = clients.matchAddress(ip);
    if (byAddress !== undefined)
      return { action: 'pass', reason: 'client whitelist', entry: byAddress, clientName };
    const byRecipient = this.#d.recipients.current.match(recipient);
    if (byRecipient !== undefined)
      return { action: 'pass', reason: 'recipient whitelist', entry: byRecipient, clientName };

    const now = this.#clock();
    const store = this.#d.store;
    const awlOn = this.#s.autoWhitelistClients > 0;
    const params = {
      now,
      delayMs: this.#s.delay,
      retryWindowMs: this.#s.retryWindow,
      maxAgeMs: this.#s.maxAge,
    };
    try {
      // 2. screen's trust, 3. the client AWL and 4. the triplet, in one step of the store; with SPF
      // keying the triplet waits until the client is known to need it (SPF costs a DNS lookup)
      const spfKeyed = this.#d.spf !== undefined && r.sender !== '';
      let key = spfKeyed ? '' : tripletKey(clientNetwork(ip, this.#s), r.sender, recipient);
      const query: GreylistQuery = { ip, awlClients: this.#s.autoWhitelistClients, ...params };
      if (!spfKeyed) query.key = key;
      if (this.#s.trustScreen) query.trust = { tests: this.#s.trustScreenTests };
      const a = await store.greylistLookup(query);
      if (a.action === 'trusted')
        return {
          action: 'pass',
          reason: a.by === 'dnswl' ? 'client trusted (dnswl)' : 'client trusted (screen)',
          clientName,
        };
      if (a.action === 'awl') return { action: 'pass', reason: 'client AWL', clientName };

      // the triplet on the SPF-authorised domain when the client passes its SPF
      let keyedOn: string | undefined;
      let g: GreylistResult;
      if (a.action === 'unkeyed') {
        key = tripletKey(clientNetwork(ip, this.#s), r.sender, recipient);
        const spf = await this.#d.spf!.check(ip, r.sender, r.helo ?? '');
        if (spf.result === 'pass') {
          keyedOn = `spf:${spf.domain}`;
          key = spfTripletKey(spf.domain, r.sender, recipient);
        }
        g = await store.greylistCheck(key, params);
      } else g = a;
      if (g.action === 'defer') {
        const reason = g.reason === 'new' ? 'new' : `early-retry (${g.secondsLeft}s missing)`;
        const d: Decision = {
          action: 'greylist',
          reason,
          secondsLeft: g.secondsLeft,
          text: this.greylistText(g.secondsLeft, recipient),
          key,
          clientName,
        };
        if (keyedOn) d.keyedOn = keyedOn;
        return d;
      }
      const d: Decision = { action: 'pass', reason: 'triplet found', key, clientName };
      if (keyedOn) d.keyedOn = keyedOn;
      if (g.firstPass) {
        d.delay = g.delayedSeconds;
        const header = this.header(g.delayedSeconds, now);
        if (header) d.header = header;
        if (awlOn) {
          // the triplet has passed: a failed AWL count must not turn that pass into a 451
          await store.awlBump(ip, now, { maxAgeMs: this.#s.maxAge }).then(
            (count) => {
              if (count === this.#s.autoWhitelistClients)
                this.#d.logger?.info({ client: ip, clientName }, `whitelisted: ${clientName}[${ip}]`);
            },
            (err: unknown) =>
              this.#d.logger?.warn({ client: ip, err: (err as Error).message }, 'AWL count not recorded'),
          );
        }
      }
      return d;
    } catch (err) {
      if (!(err instanceof StoreError)) throw err;
      return { action: 'tempfail', reason: 'store error', error: err.message, clientName };
    }
  }
}
