/**
 * access: the permanent access list (postscreen_access_list). Entries are evaluated in order and the
 * first that fires wins:
 *   permit_mynetworks            the client is in mynetworks -> permit
 *   permit|reject|dunno <cidr>   the client is in <cidr> -> that action (dunno ends the search)
 *   cidr:/path/file              Postfix cidr table: lines `<cidr> permit|reject|dunno` (or
 *                                `permit <cidr>`), `#` comments; first matching line wins; a dunno
 *                                there goes on to the next entry, as in Postfix. The file is re-read
 *                                when its mtime or size changes (checked at most once a second); a
 *                                file that cannot be read or has a bad line keeps the last good copy
 *                                and logs a warning.
 * No match is an implicit dunno. Exports AccessList and AccessVerdict.
 */
import fs from 'node:fs';
import net from 'node:net';
import { NetworkList, normalizeIp, parseCidr } from '@moat/config';

export type AccessVerdict = 'permit' | 'reject' | 'dunno';

interface Rule {
  action: AccessVerdict;
  list: net.BlockList;
}

interface Table {
  file: string;
  rules: Rule[];
  stamp: string;
  checkedAt: number;
}

type Entry = { kind: 'mynetworks' } | { kind: 'rule'; rule: Rule } | { kind: 'table'; table: Table };

export type Warn = (message: string, fields?: Record<string, unknown>) => void;

function ruleFor(action: string, network: string, where: string): Rule {
  const c = parseCidr(network);
  const a = action.toLowerCase();
  if (!c || (a !== 'permit' && a !== 'reject' && a !== 'dunno')) {
    throw new Error(`${where}: expected "<cidr> permit|reject|dunno" or "permit|reject|dunno <cidr>"`);
  }
  const list = new net.BlockList();
  list.addSubnet(c.address, c.prefix, c.family);
  return { action: a, list };
}

/** One line of a table or one inline entry: `<action> <cidr>` or `<cidr> <action>`. */
export function parseRule(text: string, where: string): Rule {
  const [a = '', b = '', ...rest] = text.trim().split(/\s+/);
  if (rest.length > 0) throw new Error(`${where}: too many words`);
  return /^(permit|reject|dunno)$/i.test(a) ? ruleFor(a, b, where) : ruleFor(b, a, where);
}

export function parseTable(text: string, file: string): Rule[] {
  const rules: Rule[] = [];
  text.split('\n').forEach((raw, i) => {
    const line = raw.replace(/#.*$/, '').trim();
    if (line) rules.push(parseRule(line, `${file}:${i + 1}`));
  });
  return rules;
}

function matches(rule: Rule, ip: string, family: 'ipv4' | 'ipv6'): boolean {
  return rule.list.check(ip, family);
}

export class AccessList {
  readonly #entries: Entry[];
  readonly #mynetworks: NetworkList;
  readonly #warn: Warn;
  readonly #now: () => number;

  constructor(
    entries: readonly string[],
    mynetworks: readonly string[],
    warn: Warn = () => undefined,
    now: () => number = Date.now,
  ) {
    this.#mynetworks = new NetworkList(mynetworks);
    this.#warn = warn;
    this.#now = now;
    this.#entries = entries.map((e, i): Entry => {
      if (/^permit_mynetworks$/i.test(e)) return { kind: 'mynetworks' };
      if (e.startsWith('cidr:')) {
        const table: Table = { file: e.slice(5), rules: [], stamp: '', checkedAt: 0 };
        this.#load(table, true);
        return { kind: 'table', table };
      }
      return { kind: 'rule', rule: parseRule(e, `screen.accessList[${i}]`) };
    });
  }

  get empty(): boolean {
    return this.#entries.length === 0;
  }

  check(address: string): AccessVerdict {
    const ip = normalizeIp(address);
    const kind = net.isIP(ip);
    if (kind === 0) return 'dunno';
    const family = kind === 4 ? 'ipv4' : 'ipv6';
    for (const e of this.#entries) {
      if (e.kind === 'mynetworks') {
        if (this.#mynetworks.has(ip)) return 'permit';
      } else if (e.kind === 'rule') {
        if (matches(e.rule, ip, family)) return e.rule.action;
      } else {
        this.#refresh(e.table);
        const hit = e.table.rules.find((r) => matches(r, ip, family));
        if (hit && hit.action !== 'dunno') return hit.action;
      }
    }
    return 'dunno';
  }

  #refresh(t: Table): void {
    const now = this.#now();
    if (now - t.checkedAt < 1000) return;
    t.checkedAt = now;
    this.#load(t, false);
  }

  /** Re-reads the table when it changed; at start-up a bad table is a configuration error. */
  #load(t: Table, first: boolean): void {
    let stamp: string;
    try {
      const st = fs.statSync(t.file);
      stamp = `${st.mtimeMs}:${st.size}`;
      if (stamp === t.stamp) return;
      t.rules = parseTable(fs.readFileSync(t.file, 'utf8'), t.file);
      t.stamp = stamp;
      if (!first) this.#warn(`access table ${t.file} reloaded`, { file: t.file, rules: t.rules.length });
    } catch (err) {
      if (first) throw new Error(`screen.accessList: cidr:${t.file}: ${(err as Error).message}`);
      if (t.stamp !== 'error') {
        this.#warn(`warning: access table ${t.file}: ${(err as Error).message}; keeping the last good copy`, {
          file: t.file,
        });
      }
      t.stamp = 'error';
    }
  }
}
