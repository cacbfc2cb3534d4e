/**
 * verdict: what a score means under postscreen's thresholds. `score >= threshold` blocks (default 1);
 * `score <= allowlistThreshold` allowlists (off when undefined; postscreen enables it only with a
 * negative value, so 0 or above is treated as off too). Exports verdict and DEFAULT_THRESHOLD.
 */

export const DEFAULT_THRESHOLD = 1;

export type Verdict = 'block' | 'allowlist' | 'neutral';

export interface Thresholds {
  threshold?: number;
  allowlistThreshold?: number;
}

export function verdict(score: number, t: Thresholds = {}): Verdict {
  if (score >= (t.threshold ?? DEFAULT_THRESHOLD)) return 'block';
  const allow = t.allowlistThreshold;
  if (allow !== undefined && allow < 0 && score <= allow) return 'allowlist';
  return 'neutral';
}
