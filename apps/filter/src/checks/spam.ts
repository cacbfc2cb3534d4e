/**
 * spam: SpamAssassin through spamd (packages/spamassassin-client), one REPORT request per message,
 * streamed from the spool. REPORT gives the score, spamd's own threshold and the rule table, from which
 * the tests list (`GTUBE=1000, ...`) and X-Spam-Report are made. Of a message above spamMaxSize only
 * the first spamMaxSize bytes are sent, and the result says so (amavis truncates the same way: a
 * message padded past the limit is still scored on its headers and the start of its body). With
 * `filter.spamd: off` nothing is sent and the result says that. Every spamd failure is an error.
 */
import { SpamdError, type SpamdClient } from 'spamassassin-client';
import { type CheckResult, type ScanInput, timed } from './types.js';

export interface SpamTest {
  name: string;
  score: number;
  description: string;
}

export interface SpamData {
  /** Undefined when spamd was not asked (too large) or failed. */
  score?: number;
  threshold?: number;
  tests: SpamTest[];
  /** Why there is no score: `off` (filter.spamd: off) or the failure. */
  skipped?: string;
  /** Only the first spamMaxSize bytes were scored. */
  truncated?: boolean;
}

/**
 * The rule table of a SpamAssassin report:
 *
 *    pts rule name              description
 *   ---- ---------------------- --------------------------------------------------
 *   1000 GTUBE                  BODY: Generic Test for Unsolicited Bulk Email
 *    0.0 NO_RELAYS              Informational: message was not relayed via SMTP
 *
 * Description lines that wrap continue on lines starting with spaces. The table shows points with one
 * decimal, so a rule worth 0.001 reads 0.0 (spamd sends no finer value).
 */
export function parseReportTests(report: string): SpamTest[] {
  const tests: SpamTest[] = [];
  let inTable = false;
  for (const line of report.split(/\r?\n/)) {
    if (!inTable) {
      if (/^-{3,} -{3,}/.test(line.trim())) inTable = true;
      continue;
    }
    const m = /^\s*(-?\d+(?:\.\d+)?)\s+([A-Za-z0-9_]+)\s*(.*)$/.exec(line);
    if (m) {
      tests.push({ name: m[2]!, score: Number(m[1]), description: m[3]!.trim() });
    } else if (/^\s+\S/.test(line) && tests.length) {
      const last = tests[tests.length - 1]!;
      last.description = `${last.description} ${line.trim()}`.trim();
    } else if (!line.trim()) {
      if (tests.length) break;
    }
  }
  return tests;
}

export interface SpamDeps {
  /** Undefined with `filter.spamd: off`. */
  spamd: SpamdClient | undefined;
  maxSize: number;
}

export function spamCheck(msg: ScanInput, deps: SpamDeps): Promise<CheckResult<SpamData>> {
  return timed<SpamData>(
    'spam',
    async () => {
      if (!deps.spamd)
        return { outcome: 'pass', detail: 'skipped: spamd off', data: { tests: [], skipped: 'off' } };
      try {
        const r = await deps.spamd.report(
          { stream: msg.stream(), length: msg.size },
          { maxSize: deps.maxSize, truncate: true },
        );
        const tests = parseReportTests(r.report);
        const cut = r.truncated ? ` (first ${deps.maxSize} of ${msg.size} bytes)` : '';
        return {
          outcome: r.isSpam ? 'fail' : 'pass',
          detail: `score=${r.score} required=${r.threshold}${cut}`,
          data: {
            score: r.score,
            threshold: r.threshold,
            tests,
            ...(r.truncated ? { truncated: true } : {}),
          },
        };
      } catch (err) {
        const what =
          err instanceof SpamdError
            ? `spamd ${err.kind}${err.phase ? ` (${err.phase})` : ''}: ${err.message}`
            : `spamd: ${(err as Error).message}`;
        return { outcome: 'error', detail: what, data: { tests: [], skipped: what } };
      }
    },
    (e) => ({ tests: [], skipped: e.message }),
  );
}
