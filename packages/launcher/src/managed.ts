/**
 * managed: keeps a managed clamd or spamd running for as long as the launcher runs. Filter only
 * knows the daemon's address, and a daemon that died would leave every message 451 4.3.0 until a
 * restart by hand; so its exit is logged (`moat: managed clamd (pid N) exited (SIGKILL); restarting
 * in 1s`) and it is started again on the same port (clamd also on the same socket: both follow from
 * its state folder and port), so filter's next connection reaches it. The delay is the services'
 * (1 s doubling to 30 s, back to 1 s after a minute up); a start that fails counts as a crash.
 * retire() ends the watch (the launcher is stopping: nothing is restarted any more); stop() also
 * stops the daemon, once a start in progress has finished.
 */
import type { DaemonHandle } from '@moat/daemons';

export interface KeptDaemonOptions {
  /** Starts the daemon again, on the address it had. */
  restart: () => Promise<DaemonHandle>;
  /** Where the exit and the restart are reported (without the `moat: ` prefix). */
  say: (line: string) => void;
  /** Called once a restarted daemon answers (its pid changed). */
  onRestart?: () => void;
  /** First restart delay, doubled per crash up to 30 s. Default 1 s. */
  backoffMs?: number;
}

/** Up this long, a daemon that exits is restarted after the first delay again. */
const HEALTHY_MS = 60_000;
const MAX_BACKOFF_MS = 30_000;

export class KeptDaemon {
  #handle: DaemonHandle;
  #since = Date.now();
  #retired = false;
  #timer: NodeJS.Timeout | undefined;
  /** A restart in progress (the daemon spawned, not yet answering). */
  #starting: Promise<void> | undefined;

  constructor(
    first: DaemonHandle,
    readonly o: KeptDaemonOptions,
  ) {
    this.#handle = first;
    this.#watch(first, this.#first);
  }

  get name(): string {
    return this.#handle.name;
  }
  get address(): string {
    return this.#handle.address;
  }
  /** The pid of the daemon now running (or last run). */
  get pid(): number {
    return this.#handle.pid;
  }

  get #first(): number {
    return this.o.backoffMs ?? 1000;
  }

  #watch(h: DaemonHandle, delayMs: number): void {
    void h.exited.then(({ code, signal }) => {
      if (this.#retired || h !== this.#handle) return;
      const delay = Date.now() - this.#since > HEALTHY_MS ? this.#first : delayMs;
      this.o.say(
        `managed ${h.name} (pid ${h.pid}) exited (${signal ?? code}); restarting in ${delay / 1000}s`,
      );
      this.#schedule(delay);
    });
  }

  #schedule(delayMs: number): void {
    // not unref'd, as the services' restart timers: the launcher runs until it is stopped anyway
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      if (this.#retired) return;
      const next = Math.min(delayMs * 2, MAX_BACKOFF_MS);
      // what the dead one left in its group (spamd's preforked children hold its port) goes first
      this.#starting = this.#handle
        .stop()
        .then(() => this.o.restart())
        .then(
          (h) => {
            this.#handle = h;
            this.#since = Date.now();
            this.o.say(`managed ${h.name} on ${h.address} (pid ${h.pid})`);
            this.o.onRestart?.();
            this.#watch(h, next);
          },
          (err: unknown) => {
            if (this.#retired) return;
            this.o.say(
              `managed ${this.name} did not start again: ${(err as Error).message}\n` +
                `moat: restarting it in ${next / 1000}s`,
            );
            this.#schedule(next);
          },
        );
    }, delayMs);
  }

  /** No more restarts: the launcher is stopping. */
  retire(): void {
    this.#retired = true;
    clearTimeout(this.#timer);
  }

  /** Retires it and stops the daemon (a restart in progress first finishes, then is stopped). */
  async stop(): Promise<void> {
    this.retire();
    await this.#starting;
    await this.#handle.stop();
  }
}
