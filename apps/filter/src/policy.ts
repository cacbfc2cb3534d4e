/**
 * policy: what applies to one recipient: is it local (spam headers are only for local recipients), does
 * it receive everything (filter.bypass), its levels and destinies (the global values, overridden by the
 * policy bank of its domain, as amavis looks up a policy bank before the global value).
 */
import { FILTER_CATEGORIES, type MoatConfig } from '@moat/config';

/** amavis' priority order, the same list the configuration validates destinies against. */
export const CATEGORIES = FILTER_CATEGORIES;
export type Category = (typeof CATEGORIES)[number];

export type Action = 'pass' | 'reject' | 'discard' | 'tempfail';

export interface Destiny {
  action: Action;
  quarantine: boolean;
}

export function parseDestiny(s: string): Destiny {
  const parts = s.split('+');
  const quarantine = parts.includes('quarantine');
  const action = (parts.find((p) => p !== 'quarantine') ?? 'pass') as Action;
  return { action, quarantine };
}

export function formatDestiny(d: Destiny): string {
  return d.quarantine ? `${d.action}+quarantine` : d.action;
}

export interface Levels {
  tag: number;
  tag2: number;
  kill: number;
}

export interface RecipientPolicy {
  address: string;
  local: boolean;
  bypass: boolean;
  /** The policy bank applied, if any (its domain). */
  bank?: string;
  levels: Levels;
  destinies: Record<Category, Destiny>;
}

type FilterConfig = MoatConfig['filter'];

export class Policy {
  readonly #domains: Set<string>;
  /** The policy banks by their domain in lower case (a bank written `Lists.Example.test` applies too). */
  readonly #banks: Map<string, FilterConfig['policyBanks'][string]>;
  constructor(
    readonly c: FilterConfig,
    domains: readonly string[],
  ) {
    this.#domains = new Set(domains.map((d) => d.toLowerCase()));
    this.#banks = new Map(Object.entries(c.policyBanks).map(([d, b]) => [d.toLowerCase(), b]));
  }

  for(address: string): RecipientPolicy {
    const addr = address.toLowerCase();
    const domain = addr.slice(addr.lastIndexOf('@') + 1);
    const c = this.c;
    const bank = this.#banks.get(domain);
    const d = { ...c.destinies, ...(bank?.destinies ?? {}) } as Record<string, string | undefined>;
    const destinies = {} as Record<Category, Destiny>;
    for (const cat of CATEGORIES) {
      destinies[cat] =
        cat === 'unchecked'
          ? { action: c.scannerFailure === 'pass' ? 'pass' : 'tempfail', quarantine: false }
          : parseDestiny(d[cat] ?? 'pass');
    }
    return {
      address,
      local: this.#domains.has(domain),
      // user+ext@domain is user@domain's (Postfix's recipient_delimiter, as amavis looks it up)
      bypass:
        c.bypass.includes(addr) ||
        c.bypass.includes(addr.replace(/^([^@+]+)\+[^@]*@/, '$1@')) ||
        c.bypass.includes(`@${domain}`),
      ...(bank ? { bank: domain } : {}),
      levels: {
        tag: bank?.tagLevel ?? c.tagLevel,
        tag2: bank?.tag2Level ?? c.tag2Level,
        kill: bank?.killLevel ?? c.killLevel,
      },
      destinies,
    };
  }
}
