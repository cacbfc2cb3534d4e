/**
 * turn-writer: the log destination. Lines logged during one event-loop turn are written to the file
 * descriptor with one direct write(2) when the turn ends (setImmediate), not one per line. With
 * `windowMs`, the lines of every turn within that many milliseconds of the first go out together: a
 * busy service then makes one write (and wakes its log reader once) per window instead of once or
 * twice per message; a window holding `highWater` bytes or more is written at the end of its turn.
 * What is buffered when the process stops or crashes is written by flushSync (the service calls it
 * from its exit and uncaughtException handlers); only a SIGKILL loses the last window.
 *
 * Why not sonic-boom, pino's own destination: in its async mode every burst of lines is an fs.write
 * on libuv's threadpool, two thread wake-ups per burst (a chain profile showed 4-6 futex calls per
 * message in each service, all of them log writes); in its sync mode it writes once per line, and
 * `minLength` buffering has no timer, so a quiet server would sit on its last lines.
 *
 * A descriptor that cannot take more now (EAGAIN: a non-blocking pipe whose reader is slow) keeps the
 * lines in memory and is retried; a closed one (EPIPE, EBADF) drops them, since there is nobody left
 * to read them. Beyond `maxBuffered` bytes waiting, lines are dropped and their count reported once
 * the descriptor takes data again: a stuck log reader must not take the mail service's memory.
 */
import fs from 'node:fs';

export interface TurnWriterOptions {
  fd: number;
  maxBuffered?: number;
  /** Retry delay after EAGAIN, in ms. */
  retryMs?: number;
  /** Gather the lines of this many ms into one write (0: one write per event-loop turn). */
  windowMs?: number;
  /** Bytes that end a window early, at the end of the turn that reached them. */
  highWater?: number;
}

export class TurnWriter {
  readonly fd: number;
  readonly #max: number;
  readonly #retryMs: number;
  readonly #windowMs: number;
  readonly #highWater: number;
  #timer: NodeJS.Timeout | undefined;
  #lines: string[] = [];
  #bytes = 0;
  #pending: Buffer | undefined;
  #scheduled = false;
  #waiting = false;
  #dropped = 0;
  #closed = false;
  /** write(2) calls made: one per turn (or window) that logged, not one per line. */
  writes = 0;

  constructor(o: TurnWriterOptions) {
    this.fd = o.fd;
    this.#max = o.maxBuffered ?? 16 * 1024 * 1024;
    this.#retryMs = o.retryMs ?? 20;
    this.#windowMs = o.windowMs ?? 0;
    this.#highWater = o.highWater ?? 64 * 1024;
  }

  /** pino's destination interface: one serialised line, newline included. */
  write(line: string): boolean {
    if (this.#closed) return true;
    if (this.#bytes + (this.#pending?.length ?? 0) > this.#max) {
      this.#dropped++;
      return true;
    }
    this.#lines.push(line);
    this.#bytes += line.length;
    if (this.#waiting) return true;
    if (this.#windowMs > 0 && this.#bytes < this.#highWater) {
      this.#timer ??= setTimeout(this.#endWindow, this.#windowMs);
    } else if (!this.#scheduled) {
      this.#scheduled = true;
      setImmediate(this.#endTurn);
    }
    return true;
  }

  readonly #endWindow = (): void => {
    this.#timer = undefined;
    this.#flush(false);
  };

  readonly #endTurn = (): void => {
    this.#scheduled = false;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#flush(false);
  };

  /** Writes everything now, waiting out a full pipe; for process exit. */
  flushSync(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
    const deadline = Date.now() + 2000;
    while (!this.#closed && (this.#pending || this.#lines.length) && Date.now() < deadline) {
      if (!this.#flush(true)) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 5);
    }
  }

  /** True when everything buffered went out. */
  #flush(sync: boolean): boolean {
    if (this.#closed) return true;
    if (this.#waiting && !sync) return false;
    if (!this.#pending) {
      if (!this.#lines.length && !this.#dropped) return true;
      let text = this.#lines.join('');
      if (this.#dropped > 0) {
        text += `${JSON.stringify({ level: 'warn', time: new Date().toISOString(), msg: `log: ${this.#dropped} lines dropped while the log reader was not reading` })}\n`;
        this.#dropped = 0;
      }
      this.#pending = Buffer.from(text, 'utf8');
      this.#lines = [];
      this.#bytes = 0;
    }
    try {
      this.writes++;
      const n = fs.writeSync(this.fd, this.#pending);
      this.#pending = n < this.#pending.length ? this.#pending.subarray(n) : undefined;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'EAGAIN') {
        // EPIPE, EBADF: the reader is gone for good
        this.#closed = true;
        this.#pending = undefined;
        this.#lines = [];
        this.#bytes = 0;
        return true;
      }
    }
    if (!this.#pending && !this.#lines.length && !this.#dropped) return true;
    if (!sync && !this.#waiting) {
      this.#waiting = true;
      setTimeout(() => {
        this.#waiting = false;
        this.#flush(false);
      }, this.#retryMs).unref();
    }
    return false;
  }
}
