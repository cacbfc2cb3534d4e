/**
 * verdict: the check results -> one decision, as amavis makes it: the categories present (in priority
 * order virus, banned, unchecked, spam, spammy, bad header, oversized, clean); per recipient the
 * blocking category (the highest present, unless the recipient is on the bypass list, who loves every
 * category but unchecked) and its destiny (from the recipient's policy bank or the global value); then one
 * answer for the whole transaction, since SMTP gives one reply at the final dot:
 *  - any tempfail -> 451 for all (nobody gets the message twice);
 *  - all recipients alike -> that destiny (reject 554 5.7.0, discard 250 2.7.0, pass);
 *  - mixed pass and block -> the passing recipients get it, the others' copies are dropped (quarantined
 *    where their destiny says so), and the client gets delivery's reply: no bounce, no backscatter.
 * Also the header fields for the delivered copy (spam headers only when every delivered recipient is
 * local) and for the quarantined one (the verdict, always).
 */
import type { Reply } from '@moat/smtp-listener';
import type { BadHeaderData } from './checks/badHeaders.js';
import type { BannedData } from './checks/banned.js';
import type { SpamData } from './checks/spam.js';
import type { CheckResult } from './checks/types.js';
import type { VirusData } from './checks/virus.js';
import { amavisNumber, field, fold, spamHeaders, spamStatusValue, virusScannedHeader } from './headers.js';
import {
  type Action,
  CATEGORIES,
  type Category,
  type Destiny,
  formatDestiny,
  type RecipientPolicy,
} from './policy.js';
import { filterReplies } from './replies.js';

export interface Results {
  virus: CheckResult<VirusData>;
  spam: CheckResult<SpamData>;
  banned: CheckResult<BannedData>;
  badHeader: CheckResult<BadHeaderData>;
}

export interface VerdictContext {
  id: string;
  hostname: string;
  spamSubjectTag: string;
  uncheckedSubjectTag: string;
  dsnCutoffLevel: number;
}

/** amavis' names for the categories, as its log lines print them. */
export const CATEGORY_WORDS: Record<Category, string> = {
  virus: 'INFECTED',
  banned: 'BANNED',
  unchecked: 'UNCHECKED',
  spam: 'SPAM',
  spammy: 'SPAMMY',
  badHeader: 'BAD-HEADER',
  oversized: 'OVERSIZED',
  clean: 'CLEAN',
};

export interface RecipientVerdict {
  address: string;
  category: Category;
  destiny: Destiny;
  /** What happens to this recipient after the transaction's single answer (mixed: discard). */
  action: Action;
  bypass: boolean;
}

export interface Decision {
  /** The message's highest category. */
  category: Category;
  categories: Category[];
  /** pass: delivered to deliverTo and delivery's reply is relayed; otherwise `reply` is ours. */
  action: Action;
  reply?: Reply;
  reason: string;
  deliverTo: string[];
  quarantineTo: string[];
  recipients: RecipientVerdict[];
  /** Header fields for the delivered copy (above the filter's Received). */
  headers: string;
  subjectTag?: string;
  /** Header fields for the quarantined copy. */
  quarantineHeaders: string;
  /** The X-Moat-Results value. */
  results: string;
  dsnSuppressed: boolean;
}

/** Printable ASCII only: texts that go into replies and header fields. */
export function ascii(s: string, max = 200): string {
  const clean = s.replace(/[^\x20-\x7e]/g, '?');
  return clean.length > max ? `${clean.slice(0, max - 3)}...` : clean;
}

/** Categories that do not depend on the recipient. */
function messageCategories(r: Results): Set<Category> {
  const present = new Set<Category>(['clean']);
  if (r.virus.outcome === 'fail') present.add('virus');
  if (r.banned.outcome === 'fail') present.add('banned');
  if ([r.virus, r.spam, r.banned, r.badHeader].some((c) => c.outcome === 'error')) present.add('unchecked');
  if (r.badHeader.outcome === 'fail') present.add('badHeader');
  return present;
}

function spamCategory(score: number | undefined, p: RecipientPolicy): Category | undefined {
  if (score === undefined) return undefined;
  if (score >= p.levels.kill) return 'spam';
  if (score >= p.levels.tag2) return 'spammy';
  return undefined;
}

/** What failed, in words fit for the client (details are in the log). */
export function uncheckedWhat(r: Results): string {
  const what: string[] = [];
  if (r.virus.outcome === 'error') {
    const v = r.virus.data.verdict;
    what.push(
      v.kind === 'limit'
        ? 'virus scanner limit exceeded'
        : v.kind === 'encrypted'
          ? 'encrypted content'
          : 'virus scanner failure',
    );
  }
  if (r.spam.outcome === 'error') what.push('spam scanner failure');
  if (r.banned.outcome === 'error' || r.badHeader.outcome === 'error') what.push('content check failure');
  return what.join(', ') || 'not checked';
}

export function reasonFor(cat: Category, r: Results): string {
  switch (cat) {
    case 'virus':
      return ascii(
        `INFECTED: ${r.virus.data.verdict.kind === 'virus' ? r.virus.data.verdict.names.join(', ') : '?'}`,
      );
    case 'banned':
      return ascii(`BANNED: ${r.banned.data.banned.join(', ')}`);
    case 'unchecked':
      return `UNCHECKED: ${uncheckedWhat(r)}`;
    case 'spam':
      return 'SPAM';
    case 'spammy':
      return 'SPAMMY';
    case 'badHeader':
      return ascii(`BAD HEADER: ${r.badHeader.data.problems[0]?.text ?? '?'}`);
    case 'oversized':
      return 'OVERSIZED';
    default:
      return 'CLEAN';
  }
}

function replyFor(action: Action, cat: Category, r: Results, id: string): Reply | undefined {
  const reason = reasonFor(cat, r);
  switch (action) {
    case 'tempfail':
      return cat === 'unchecked'
        ? filterReplies.unchecked(id, uncheckedWhat(r))
        : filterReplies.tempfail(id, reason);
    case 'discard':
      return filterReplies.discard(id, reason);
    case 'reject':
      if (cat === 'badHeader')
        return filterReplies.rejectBadHeader(id, reason, r.badHeader.data.problems[0]?.minor === 2);
      if (cat === 'oversized') return filterReplies.rejectOversized(id);
      return filterReplies.reject(id, reason);
    default:
      return undefined;
  }
}

export function resultsSummary(r: Results): string {
  return [r.virus, r.spam, r.banned, r.badHeader]
    .map((c) => `${c.check}=${c.outcome} (${ascii(c.detail, 120)}, ${c.ms} ms)`)
    .join('; ');
}

function alerts(present: Set<Category>, r: Results): string {
  let out = '';
  if (present.has('virus'))
    out += fold('X-Moat-Alert', `INFECTED, message contains virus: ${reasonFor('virus', r).slice(10)}`);
  if (present.has('banned'))
    out += fold('X-Moat-Alert', `BANNED, message contains ${reasonFor('banned', r).slice(8)}`);
  if (present.has('unchecked')) out += fold('X-Moat-Alert', `UNCHECKED, ${uncheckedWhat(r)}`);
  if (present.has('badHeader'))
    for (const p of r.badHeader.data.problems.slice(0, 5))
      out += fold('X-Moat-Alert', `BAD HEADER SECTION, ${ascii(p.text)}`);
  return out;
}

export function decide(r: Results, recipients: readonly RecipientPolicy[], ctx: VerdictContext): Decision {
  const base = messageCategories(r);
  const score = r.spam.data.score;
  const verdicts: RecipientVerdict[] = recipients.map((p) => {
    const present = new Set(base);
    const sc = spamCategory(score, p);
    if (sc) present.add(sc);
    // a bypass recipient loves every category but unchecked (as amavis: the blocking category is the
    // highest one the recipient does not love), so a scanner failure decides for it whatever else is found
    const category =
      p.bypass && present.has('unchecked') ? 'unchecked' : CATEGORIES.find((c) => present.has(c))!;
    const loved = p.bypass && category !== 'unchecked';
    const destiny: Destiny = loved ? { action: 'pass', quarantine: false } : p.destinies[category];
    return { address: p.address, category, destiny, action: destiny.action, bypass: p.bypass };
  });
  const all = new Set(base);
  for (const p of recipients) {
    const sc = spamCategory(score, p);
    if (sc) all.add(sc);
  }
  const categories = CATEGORIES.filter((c) => all.has(c));
  const highest = (vs: RecipientVerdict[]) =>
    CATEGORIES.find((c) => vs.some((v) => v.category === c)) ?? categories[0]!;

  let action: Action;
  let category: Category;
  const tempfails = verdicts.filter((v) => v.destiny.action === 'tempfail');
  if (tempfails.length) {
    action = 'tempfail';
    category = highest(tempfails);
    for (const v of verdicts) v.action = 'tempfail';
  } else {
    const actions = new Set(verdicts.map((v) => v.destiny.action));
    if (actions.size === 1) {
      action = [...actions][0]!;
      category = highest(verdicts);
    } else if (actions.has('pass')) {
      action = 'pass';
      category = highest(verdicts);
      for (const v of verdicts) if (v.destiny.action !== 'pass') v.action = 'discard';
    } else {
      // reject and discard mixed: nobody gets it, the client is told 250 (discard is the safe common form)
      action = 'discard';
      category = highest(verdicts);
      for (const v of verdicts) v.action = 'discard';
    }
  }
  const deliverTo = verdicts.filter((v) => v.action === 'pass').map((v) => v.address);
  const quarantineTo =
    action === 'tempfail' ? [] : verdicts.filter((v) => v.destiny.quarantine).map((v) => v.address);
  const reason = reasonFor(category, r);
  const reply = replyFor(action, category, r, ctx.id);

  // the delivered copy's header fields
  const delivered = recipients.filter((p) => deliverTo.includes(p.address));
  const allLocal = delivered.length > 0 && delivered.every((p) => p.local);
  const lead = delivered[0];
  let headers = '';
  if (quarantineTo.length && deliverTo.length) headers += field('X-Quarantine-ID', `<${ctx.id}>`);
  if (r.virus.outcome !== 'error') headers += virusScannedHeader(ctx.hostname);
  const tags: string[] = [];
  if (allLocal && lead && score !== undefined) {
    headers += spamHeaders({
      score,
      tests: r.spam.data.tests,
      tagLevel: lead.levels.tag,
      tag2Level: lead.levels.tag2,
    });
    if (score >= lead.levels.tag2 && score >= lead.levels.tag) tags.push(ctx.spamSubjectTag);
  }
  if (allLocal && all.has('unchecked') && deliverTo.length) tags.unshift(ctx.uncheckedSubjectTag);
  headers += alerts(all, r);
  const results = resultsSummary(r);
  headers += fold('X-Moat-Results', results);

  // the quarantined copy: the verdict, whatever the recipients
  let quarantineHeaders = fold(
    'X-Moat-Verdict',
    `${CATEGORY_WORDS[category]} ${formatDestiny(
      // the destiny of a recipient whose copy this is (quarantined), not of one that loved it
      (
        verdicts.find((v) => v.category === category && v.destiny.quarantine) ??
        verdicts.find((v) => v.category === category)
      )?.destiny ?? { action, quarantine: true },
    )}, id=${ctx.id}, reason=${reason}`,
  );
  if (score !== undefined && recipients[0]) {
    const l = recipients[0].levels;
    quarantineHeaders +=
      field('X-Spam-Score', amavisNumber(score)) +
      fold(
        'X-Spam-Status',
        spamStatusValue({ score, tests: r.spam.data.tests, tagLevel: l.tag, tag2Level: l.tag2 }),
      );
  }
  quarantineHeaders += alerts(all, r) + fold('X-Moat-Results', results);

  return {
    category,
    categories,
    action,
    ...(reply ? { reply } : {}),
    reason,
    deliverTo,
    quarantineTo,
    recipients: verdicts,
    headers,
    ...(tags.length ? { subjectTag: tags.join('') } : {}),
    quarantineHeaders,
    results,
    dsnSuppressed: score !== undefined && score >= ctx.dsnCutoffLevel,
  };
}
