/**
 * maintenance: Postgrey's database maintenance (triplets unseen for max-age, never-passed triplets
 * older than the retry window, AWL entries unseen for max-age), run by a timer that never keeps the
 * process alive and never overlaps itself. The store works in small batches (SQLite) or SCANs
 * (Redis), so mail keeps flowing while it runs; unlike Postgrey it needs no night-time window.
 * A failure is logged and retried at the next tick. Exports startMaintenance.
 */
import type { Logger } from '@moat/log';
import type { ReputationStore } from '@moat/reputation';

export function startMaintenance(
  store: ReputationStore,
  o: { intervalMs: number; maxAgeMs: number; retryWindowMs: number; firstAfterMs?: number },
  logger: Logger,
): { stop(): void; runNow(): Promise<void> } {
  let running = false;
  const run = async () => {
    if (running) return;
    running = true;
    const started = Date.now();
    try {
      const r = await store.maintenance({ maxAgeMs: o.maxAgeMs, retryWindowMs: o.retryWindowMs });
      logger.info({ ...r, ms: Date.now() - started }, 'maintenance: expired entries removed');
    } catch (err) {
      logger.warn({ err: (err as Error).message }, 'maintenance failed; retried at the next run');
    } finally {
      running = false;
    }
  };
  const first = setTimeout(() => void run(), o.firstAfterMs ?? Math.min(60_000, o.intervalMs));
  const timer = setInterval(() => void run(), o.intervalMs);
  first.unref();
  timer.unref();
  return {
    stop() {
      clearTimeout(first);
      clearInterval(timer);
    },
    runNow: run,
  };
}
