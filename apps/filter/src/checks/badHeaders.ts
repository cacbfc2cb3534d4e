/**
 * badHeaders: amavis' bad-header tests on the message's header section, with its texts and minor codes
 * (CC_BADH,n): 1 MIME error, 2 non-encoded 8-bit data, 3 control character (NUL, bare CR), 4 a
 * whitespace-only line, 5 a line longer than 998 characters, 6 a syntax error, 7 a missing required field,
 * 8 a duplicate field. The MIME errors come from the MIME walk (mime.ts).
 */
import type { MimeSummary } from '../mime.js';
import { type CheckResult, timed } from './types.js';

export interface HeaderProblem {
  minor: 1 | 2 | 3 | 4 | 5 | 6 | 7 | 8;
  text: string;
}

export interface BadHeaderData {
  problems: HeaderProblem[];
}

/** Fields RFC 5322 3.6 (and RFC 2045) allow once at most. */
const ONCE = [
  'Date',
  'From',
  'Sender',
  'Reply-To',
  'To',
  'Cc',
  'Bcc',
  'Message-ID',
  'In-Reply-To',
  'References',
  'Subject',
  'MIME-Version',
  'Content-Type',
  'Content-Transfer-Encoding',
];
const REQUIRED = ['From', 'Date'];

const hex = (b: number) => b.toString(16).toUpperCase().padStart(2, '0');

/** The problems of a raw header section (the bytes before the empty line, CRLF line ends). */
export function headerProblems(head: Buffer, complete: boolean): HeaderProblem[] {
  const problems: HeaderProblem[] = [];
  const seen = new Set<string>();
  const add = (p: HeaderProblem) => {
    const key = `${p.minor}:${p.text}`;
    if (!seen.has(key)) {
      seen.add(key);
      problems.push(p);
    }
  };
  if (!complete) add({ minor: 6, text: 'Header section too long or not terminated by an empty line' });
  const counts = new Map<string, { name: string; n: number }>();
  let field = '';
  // split on CRLF only: a bare CR or LF stays inside its line and is reported
  const lines = head.toString('latin1').split('\r\n');
  if (lines[lines.length - 1] === '') lines.pop();
  for (const line of lines) {
    if (line.length > 998)
      add({ minor: 5, text: `Header line longer than 998 characters: ${line.slice(0, 40)}...` });
    if (/^[ \t]/.test(line)) {
      if (!field) add({ minor: 6, text: `Header field syntax error: continuation line without a field` });
      else if (!line.trim()) add({ minor: 4, text: `Header field occupying only whitespace: ${field}` });
    } else {
      const m = /^([!-9;-~]+)[ \t]*:/.exec(line);
      if (!m) {
        add({ minor: 6, text: `Header field syntax error: ${JSON.stringify(line.slice(0, 40))}` });
        field = '';
        continue;
      }
      field = m[1]!;
      const key = field.toLowerCase();
      const c = counts.get(key);
      if (c) c.n++;
      else counts.set(key, { name: field, n: 1 });
    }
    for (let i = 0; i < line.length; i++) {
      const code = line.charCodeAt(i);
      if (code >= 0x80) {
        add({
          minor: 2,
          text: `Non-encoded 8-bit data (char ${hex(code)} hex) in message header '${field || '?'}'`,
        });
        break;
      }
      if (code === 0 || code === 0x0d || code === 0x0a) {
        add({
          minor: 3,
          text: `Improper use of control character (char ${hex(code)} hex) in message header '${field || '?'}'`,
        });
        break;
      }
    }
  }
  for (const name of REQUIRED) {
    if (!counts.has(name.toLowerCase())) add({ minor: 7, text: `Missing required header field: "${name}"` });
  }
  for (const name of ONCE) {
    const c = counts.get(name.toLowerCase());
    if (c && c.n > 1) add({ minor: 8, text: `Duplicate header field: "${name}"` });
  }
  return problems.sort((a, b) => a.minor - b.minor);
}

export function badHeaderCheck(
  head: { head: Buffer; complete: boolean },
  mime: Promise<MimeSummary>,
): Promise<CheckResult<BadHeaderData>> {
  return timed<BadHeaderData>(
    'badHeader',
    async () => {
      const problems = [
        ...(await mime).mimeErrors.map((text) => ({ minor: 1 as const, text })),
        ...headerProblems(head.head, head.complete),
      ].sort((a, b) => a.minor - b.minor);
      if (!problems.length) return { outcome: 'pass', detail: 'ok', data: { problems } };
      return { outcome: 'fail', detail: problems.map((p) => p.text).join('; '), data: { problems } };
    },
    () => ({ problems: [] }),
  );
}
