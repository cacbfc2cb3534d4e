/**
 * types: what every check returns. A check looks at the spooled message and answers pass (nothing
 * found), fail (something found: a virus, a banned part, a bad header, spam by spamd's own threshold)
 * or error (it could not tell: a scanner down, slow or over its limits). Checks never choose a reply;
 * verdict.ts does, from all of them together.
 */
import type { Readable } from 'node:stream';

export type CheckName = 'virus' | 'spam' | 'banned' | 'badHeader';
export type Outcome = 'pass' | 'fail' | 'error';

export interface CheckResult<D = unknown> {
  check: CheckName;
  outcome: Outcome;
  /** One line for the log and X-Moat-Results (never message content beyond names). */
  detail: string;
  ms: number;
  data: D;
}

/** The spooled message as the checks see it: re-readable from its start, with its size. */
export interface ScanInput {
  size: number;
  stream(): Readable;
}

/** Runs fn and stamps the result with its check name and duration; a throw becomes an error outcome. */
export async function timed<D>(
  check: CheckName,
  fn: () => Promise<Omit<CheckResult<D>, 'check' | 'ms'>>,
  onThrow: (err: Error) => D,
): Promise<CheckResult<D>> {
  const started = performance.now();
  try {
    const r = await fn();
    return { check, ...r, ms: Math.round(performance.now() - started) };
  } catch (err) {
    const e = err instanceof Error ? err : new Error(String(err));
    return {
      check,
      outcome: 'error',
      detail: `internal error: ${e.message}`,
      ms: Math.round(performance.now() - started),
      data: onThrow(e),
    };
  }
}
