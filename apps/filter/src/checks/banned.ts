/**
 * banned: amavis' $banned_filename_re over every part the MIME walk found (mime.ts), archives included.
 * Each part is judged with its chain (the archives it sits in, then itself); every link offers its
 * declared name, declared MIME type and detected type (`.exe-ms`, ...), and UNDECIPHERABLE when it is
 * encrypted. The rules are tried in order and the first that matches any of these decides: a ban, or
 * (`allow /re/`) a pass, so `allow /^\.(rpm|cpio|tar)$/` before a ban lets anything inside a tar through.
 * A walk that stopped early (the MIME parser's limits) is an error (UNCHECKED) unless a ban was found.
 */
import { candidates, type MimeSummary } from '../mime.js';
import { type CheckResult, timed } from './types.js';

export interface BannedRule {
  allow: boolean;
  re: RegExp;
  source: string;
}

export function parseBannedRules(rules: readonly string[]): BannedRule[] {
  return rules.map((source) => {
    const m = /^(allow\s+)?\/(.*)\/([a-z]*)$/s.exec(source.trim());
    if (!m) throw new Error(`banned rule: expected /regex/flags or allow /regex/flags: ${source}`);
    return { allow: !!m[1], re: new RegExp(m[2]!, m[3]), source };
  });
}

export interface BannedData {
  /** What was banned, as `outer.zip/inner.pdf.exe`. */
  banned: string[];
  /** The rule that banned the first one. */
  rule?: string;
  notes: string[];
}

/** The first rule matching any candidate of the chain, or undefined. */
export function judge(chainCandidates: string[], rules: readonly BannedRule[]): BannedRule | undefined {
  for (const rule of rules) if (chainCandidates.some((c) => rule.re.test(c))) return rule;
  return undefined;
}

export function evaluateBanned(mime: MimeSummary, rules: readonly BannedRule[]): BannedData {
  const banned: string[] = [];
  let first: string | undefined;
  for (const part of mime.parts) {
    const all = part.chain.flatMap(candidates);
    const rule = judge(all, rules);
    if (rule && !rule.allow) {
      banned.push(part.chain.map((a) => a.name ?? a.detected ?? a.type ?? '?').join('/'));
      first ??= rule.source;
    }
  }
  return { banned: [...new Set(banned)], ...(first ? { rule: first } : {}), notes: mime.notes };
}

export function bannedCheck(
  mime: Promise<MimeSummary>,
  rules: readonly BannedRule[],
): Promise<CheckResult<BannedData>> {
  return timed<BannedData>(
    'banned',
    async () => {
      const walked = await mime;
      const data = evaluateBanned(walked, rules);
      if (data.banned.length) return { outcome: 'fail', detail: `BANNED: ${data.banned.join(', ')}`, data };
      // parts after the point where the walk stopped were never judged: unknown, not clean (amavis:
      // a message it cannot take apart is UNCHECKED)
      if (walked.stopped)
        return { outcome: 'error', detail: `MIME structure not read to the end: ${walked.stopped}`, data };
      const extra = data.notes.length ? ` (${data.notes.length} limit notes)` : '';
      return { outcome: 'pass', detail: `no banned parts${extra}`, data };
    },
    () => ({ banned: [], notes: [] }),
  );
}
