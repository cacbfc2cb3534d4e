/**
 * headers: the header fields the filter adds, in amavis' exact format:
 *
 *   X-Virus-Scanned: ClamAV using moat at mx.example.test
 *   X-Spam-Flag: NO
 *   X-Spam-Score: -2.877
 *   X-Spam-Level:
 *   X-Spam-Status: No, score=-2.877 tagged_above=2 required=6.2
 *   	tests=[ALL_TRUSTED=-1, BAYES_00=-1.9]
 *
 * Numbers as amavis prints them (0+sprintf("%.3f")): at most three decimals, no trailing zeros.
 * `required=` is the tag2 level, as in amavis. Lines are folded at 78 characters between words.
 */
import type { SpamTest } from './checks/spam.js';

/** amavis' number format: 0+sprintf("%.3f", n). */
export function amavisNumber(n: number): string {
  const r = Math.round(n * 1000) / 1000;
  return String(Object.is(r, -0) ? 0 : r);
}

/** One `*` per whole point, none below 1, at most 64 ($sa_spam_level_char). */
export function spamLevel(score: number): string {
  return '*'.repeat(Math.max(0, Math.min(64, Math.floor(score))));
}

/** Folds `name: value` at 78 columns between words, continuation lines starting with a tab. */
export function fold(name: string, value: string, width = 78): string {
  const [first = '', ...rest] = value.split(' ');
  const lines: string[] = [];
  let line = `${name}: ${first}`;
  for (const w of rest) {
    if (line.length + 1 + w.length > width) {
      lines.push(line);
      line = `\t${w}`;
    } else line += ` ${w}`;
  }
  lines.push(line);
  return lines.join('\r\n') + '\r\n';
}

export function field(name: string, value: string): string {
  return `${name}: ${value}\r\n`;
}

export interface SpamHeaderInput {
  score: number;
  tests: readonly SpamTest[];
  tagLevel: number;
  tag2Level: number;
}

export function spamStatusValue(s: SpamHeaderInput): string {
  const yes = s.score >= s.tag2Level;
  const tests = s.tests.map((t) => `${t.name}=${amavisNumber(t.score)}`).join(', ');
  return (
    `${yes ? 'Yes' : 'No'}, score=${amavisNumber(s.score)} tagged_above=${amavisNumber(s.tagLevel)} ` +
    `required=${amavisNumber(s.tag2Level)} tests=[${tests}]`
  );
}

/** X-Spam-Flag, -Score, -Level, -Status (and -Report at tag2); empty below the tag level. */
export function spamHeaders(s: SpamHeaderInput): string {
  if (s.score < s.tagLevel) return '';
  const yes = s.score >= s.tag2Level;
  let out =
    field('X-Spam-Flag', yes ? 'YES' : 'NO') +
    field('X-Spam-Score', amavisNumber(s.score)) +
    field('X-Spam-Level', spamLevel(s.score)) +
    fold('X-Spam-Status', spamStatusValue(s));
  if (yes) {
    out += 'X-Spam-Report: \r\n';
    for (const t of s.tests) {
      out += `\t* ${amavisNumber(t.score).padStart(5)} ${t.name} ${t.description}`.trimEnd() + '\r\n';
    }
    if (!s.tests.length) out += '\t* (no rules hit)\r\n';
  }
  return out;
}

export function virusScannedHeader(hostname: string): string {
  return field('X-Virus-Scanned', `ClamAV using moat at ${hostname}`);
}
