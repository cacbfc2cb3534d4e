/**
 * limits: postscreen's connection limits. Per client address, the open connections (screening or
 * spliced): past clientConnectionCountLimit the next one gets `421 4.7.0 Error: too many
 * connections` (0 = no limit; permitted clients are not counted, as mynetworks is exempt in
 * Postfix). In total, the clients being screened at once (greet wait, DNSBL, the enforce engine):
 * past preQueueLimit the next one gets `421 4.3.2 All screening ports are busy`. Allowlisted and
 * PASS OLD clients never enter screening, so a flood of new clients cannot lock out known ones.
 * Exports Limits.
 */

export class Limits {
  readonly #perClient = new Map<string, number>();
  #screening = 0;

  constructor(
    readonly clientLimit: number,
    readonly preQueueLimit: number,
  ) {}

  get screening(): number {
    return this.#screening;
  }

  /** Counts a connection of `ip`; false (and not counted) when the client is over its limit. */
  openClient(ip: string): boolean {
    const n = this.#perClient.get(ip) ?? 0;
    if (this.clientLimit > 0 && n >= this.clientLimit) return false;
    this.#perClient.set(ip, n + 1);
    return true;
  }

  closeClient(ip: string): void {
    const n = this.#perClient.get(ip) ?? 0;
    if (n <= 1) this.#perClient.delete(ip);
    else this.#perClient.set(ip, n - 1);
  }

  /** Takes a screening slot; false when all are in use. */
  enterScreening(): boolean {
    if (this.#screening >= this.preQueueLimit) return false;
    this.#screening++;
    return true;
  }

  leaveScreening(): void {
    if (this.#screening > 0) this.#screening--;
  }
}
