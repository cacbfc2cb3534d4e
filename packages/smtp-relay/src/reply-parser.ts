/**
 * reply-parser: turns the bytes a server sends into whole replies ("250-a", "250 b" -> {250, [a, b]}),
 * across chunk boundaries, for any number of pipelined replies in one chunk.
 */
import type { Reply } from '@moat/smtp-listener';

export class ReplyParser {
  #buffer = '';
  #lines: string[] = [];

  /** Feeds bytes; returns the replies completed by them, in order. Throws on a malformed line. */
  push(chunk: Buffer): Reply[] {
    this.#buffer += chunk.toString('utf8');
    const out: Reply[] = [];
    let nl: number;
    while ((nl = this.#buffer.indexOf('\n')) !== -1) {
      const line = this.#buffer.slice(0, nl).replace(/\r$/, '');
      this.#buffer = this.#buffer.slice(nl + 1);
      const m = /^(\d{3})([ -]?)(.*)$/.exec(line);
      if (!m) throw new Error(`malformed reply line: ${JSON.stringify(line.slice(0, 80))}`);
      this.#lines.push(m[3]!);
      if (m[2] !== '-') {
        out.push({ code: Number(m[1]), lines: this.#lines });
        this.#lines = [];
      }
    }
    if (this.#buffer.length > 64 * 1024) throw new Error('reply line too long');
    return out;
  }
}
