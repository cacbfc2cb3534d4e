/**
 * deep: postscreen's deep protocol tests, watched on the live spliced session instead of in a dummy
 * engine, so a client that passes goes on in the same session (no 450 and no reconnect).
 *
 *  - pipelining: a command sent while the reply to an earlier command that must end a group is still
 *    owed (RFC 2920: only RSET, MAIL, SEND, SOML, SAML and RCPT may sit inside a group; the banner
 *    counts as such a reply: talking before it is a violation too). greylist announces PIPELINING,
 *    so MAIL/RCPT/DATA in one write after the EHLO reply is fine; EHLO followed by MAIL before the
 *    EHLO reply is not.
 *  - non_smtp_command: a forbidden command (CONNECT, GET, POST), a header-like `Name:` line, or a line
 *    that does not start with a letter.
 *  - bare_newline: a command line ended by LF alone.
 *
 * Every enabled test passes when the client sends its first RCPT without a violation; watching stops
 * then, or at DATA/BDAT/STARTTLS (the stream stops being command lines), after which screen is a plain
 * pipe again. The watcher also follows the server's replies, so that when `enforce` hands the session
 * to the engine, the engine knows the HELO name and sender already confirmed and answers the commands
 * whose replies are still owed. Pure: bytes in, verdicts out. Exports DeepWatcher and its types.
 */
import type { DeepTest } from './replies.js';

const GROUPABLE = new Set(['RSET', 'MAIL', 'SEND', 'SOML', 'SAML', 'RCPT']);
const END_OF_COMMANDS = new Set(['DATA', 'BDAT', 'STARTTLS']);
const HEADER_LIKE = /^[!-9;-~]+:/;
const MAX_LINE = 4096;

export interface DeepOptions {
  /** The tests still to run for this client (enabled and without a valid pass). */
  tests: ReadonlySet<DeepTest>;
  /** Upper-case forbidden command verbs. */
  forbidden: ReadonlySet<string>;
}

export interface Violation {
  test: DeepTest;
  /** The last command before the violation (postscreen's "after <cmd>"). */
  after: string;
  /** The offending bytes (from the start of the offending line). */
  text: Buffer;
}

export interface ClientResult {
  violations: Violation[];
  /** Bytes of the chunk the watcher did not look at (it was done), a partial line included. */
  tail: Buffer;
  /** Tests passed by this chunk (at RCPT). */
  passed: DeepTest[];
  /** Nothing more to watch. */
  done: boolean;
}

interface Owed {
  verb: string;
  line: string;
}

export class DeepWatcher {
  readonly #o: DeepOptions;
  readonly #undecided: Set<DeepTest>;
  #partial: Buffer | undefined;
  #serverHead = '';
  #owed: Owed[] = [{ verb: 'CONNECT', line: '' }];
  #nonGroupableOwed = 1;
  #last = 'CONNECT';
  /** Confirmed by the server's replies. */
  helo = '';
  from: string | undefined;
  proto: 'SMTP' | 'ESMTP' = 'SMTP';
  done = false;

  constructor(o: DeepOptions) {
    this.#o = o;
    this.#undecided = new Set(o.tests);
    if (this.#undecided.size === 0) this.done = true;
  }

  /** True while the banner (CONNECT) is still owed. */
  get bannerOwed(): boolean {
    return this.#owed[0]?.verb === 'CONNECT';
  }

  /** Command lines sent whose replies are still owed (the banner excluded). */
  owedLines(): string[] {
    return this.#owed.filter((o) => o.verb !== 'CONNECT').map((o) => o.line);
  }

  /** Client -> server bytes. */
  client(chunk: Buffer): ClientResult {
    const result: ClientResult = {
      violations: [],
      tail: Buffer.alloc(0),
      passed: [],
      done: this.done,
    };
    if (this.done) return result;
    const data = this.#partial ? Buffer.concat([this.#partial, chunk]) : chunk;
    this.#partial = undefined;
    let start = 0;
    let nl: number;
    while (!this.done && (nl = data.indexOf(0x0a, start)) >= 0) {
      const bare = nl === 0 || data[nl - 1] !== 0x0d;
      const line = data.subarray(start, bare ? nl : nl - 1).toString('latin1');
      for (const v of this.#line(line, bare)) result.violations.push({ ...v, text: data.subarray(start) });
      start = nl + 1;
      const sp = line.indexOf(' ');
      const verb = (sp < 0 ? line : line.slice(0, sp)).toUpperCase();
      if (verb === 'RCPT' && this.#undecided.size > 0) {
        result.passed = [...this.#undecided];
        this.#undecided.clear();
      }
      if (this.#undecided.size === 0 || END_OF_COMMANDS.has(verb)) this.done = true;
    }
    result.tail = data.subarray(start);
    if (!this.done && start < data.length) {
      if (data.length - start > MAX_LINE) this.done = true;
      else this.#partial = Buffer.from(data.subarray(start));
    }
    result.done = this.done;
    return result;
  }

  /** Server -> client bytes: counts final reply lines, confirming the owed commands in order. */
  server(chunk: Buffer): void {
    let start = 0;
    for (;;) {
      const nl = chunk.indexOf(0x0a, start);
      const end = nl < 0 ? chunk.length : nl;
      if (this.#serverHead.length < 4) {
        this.#serverHead += chunk
          .subarray(start, Math.min(end, start + 4 - this.#serverHead.length))
          .toString('latin1');
      }
      if (nl < 0) return;
      const head = this.#serverHead;
      this.#serverHead = '';
      start = nl + 1;
      if (/^\d{3}[ \r]?$/.test(head) || /^\d{3} /.test(head)) this.#confirm(Number(head.slice(0, 3)));
    }
  }

  #confirm(code: number): void {
    const o = this.#owed.shift();
    if (!o) return;
    if (!GROUPABLE.has(o.verb)) this.#nonGroupableOwed--;
    if (code >= 400) return;
    const arg = o.line.slice(o.verb.length).trim();
    if (o.verb === 'EHLO' || o.verb === 'HELO') {
      this.helo = arg;
      this.proto = o.verb === 'EHLO' ? 'ESMTP' : 'SMTP';
      this.from = undefined;
    } else if (o.verb === 'MAIL') {
      this.from = /^FROM:\s*<([^>]*)>/i.exec(arg)?.[1] ?? '';
    } else if (o.verb === 'RSET') {
      this.from = undefined;
    }
  }

  #line(line: string, bare: boolean): Omit<Violation, 'text'>[] {
    const out: Omit<Violation, 'text'>[] = [];
    const sp = line.indexOf(' ');
    const verb = (sp < 0 ? line : line.slice(0, sp)).toUpperCase();
    const after = this.#last;
    const t = this.#undecided;
    if (t.has('pipelining') && this.#nonGroupableOwed > 0) {
      const waiting = [...this.#owed].reverse().find((o) => !GROUPABLE.has(o.verb))!;
      out.push({ test: 'pipelining', after: waiting.verb });
      t.delete('pipelining');
    }
    if (
      t.has('non_smtp_command') &&
      (this.#o.forbidden.has(verb) || HEADER_LIKE.test(line) || (line.length > 0 && !/^[A-Za-z]/.test(line)))
    ) {
      out.push({ test: 'non_smtp_command', after });
      t.delete('non_smtp_command');
    }
    if (t.has('bare_newline') && bare) {
      out.push({ test: 'bare_newline', after });
      t.delete('bare_newline');
    }
    this.#owed.push({ verb, line });
    if (!GROUPABLE.has(verb)) this.#nonGroupableOwed++;
    this.#last = verb || 'EMPTY';
    return out;
  }
}
