/**
 * line-endings: the one rule for bare CR and bare LF in DATA (the SMTP smuggling defence).
 *
 * smtp-server only ends DATA on CRLF.CRLF, and dot-unstuffs after any LF. What arrives here is the
 * unstuffed body. The rule, applied once in the listener so that no bare CR or LF crosses a hop:
 *
 *   - CRLF stays CRLF;
 *   - a run of CRs followed by LF (CR CR LF, what `smtp-source -F` sends for CRLF files) is one CRLF;
 *   - a lone LF becomes CRLF (Postfix 3.9's smtpd_forbid_bare_newline = normalize);
 *   - a run of CRs not followed by LF becomes one CRLF.
 *
 * So "\n.\n" or "\r.\r" inside a body becomes a CRLF "." CRLF line *inside* the message, which the relay
 * client dot-stuffs like any other: no hop can read a second message out of one. Normalising (rather
 * than rejecting) keeps mail from old or broken senders flowing, as Postfix does by default.
 *
 * Also counts the bytes and fails the stream with MessageTooBig once the limit is passed, by the bytes
 * received or by the bytes passed on (normalised), so a hop stops forwarding an oversized message at
 * once instead of at its end.
 */
import { Transform, type TransformCallback } from 'node:stream';

const CR = 0x0d;
const LF = 0x0a;
const CRLF = Buffer.from('\r\n');

export class MessageTooBig extends Error {
  constructor(readonly limit: number) {
    super(`message exceeds ${limit} bytes`);
    this.name = 'MessageTooBig';
  }
}

/** The rule itself, chunk by chunk, for a stream (LineEndingNormalizer) or a server's own data loop. */
export class LineEndings {
  /** A CR run at the end of the previous chunk, waiting to see whether LF follows. */
  #pendingCr = false;
  /** Lines that needed fixing (for the log). */
  bareLineEndings = 0;

  /** What is left at the end of the message: a CRLF for a CR run still pending, else nothing. */
  flush(): Buffer | undefined {
    if (!this.#pendingCr) return undefined;
    this.#pendingCr = false;
    this.bareLineEndings++;
    return CRLF;
  }

  normalize(chunk: Buffer): Buffer {
    // fast path: no CR pending, and every CR is directly followed by LF and every LF preceded by CR
    let clean = !this.#pendingCr;
    if (clean) {
      for (let i = chunk.indexOf(LF); i !== -1; i = chunk.indexOf(LF, i + 1)) {
        if (i === 0 || chunk[i - 1] !== CR || (i >= 2 && chunk[i - 2] === CR)) {
          clean = false;
          break;
        }
      }
    }
    if (clean) {
      let crs = 0;
      for (let i = chunk.indexOf(CR); i !== -1; i = chunk.indexOf(CR, i + 1)) crs++;
      let lfs = 0;
      for (let i = chunk.indexOf(LF); i !== -1; i = chunk.indexOf(LF, i + 1)) lfs++;
      if (crs === lfs) return chunk;
      // a CR at the very end may be completed by the next chunk; anything else needs the slow path
      if (crs === lfs + 1 && chunk[chunk.length - 1] === CR) {
        this.#pendingCr = true;
        return chunk.subarray(0, chunk.length - 1);
      }
    }
    return this.#slow(chunk);
  }

  #slow(chunk: Buffer): Buffer {
    const out = Buffer.allocUnsafe(chunk.length * 2 + 2);
    let o = 0;
    let i = 0;
    if (this.#pendingCr) {
      // skip further CRs of the same run
      while (i < chunk.length && chunk[i] === CR) i++;
      if (i === chunk.length) return Buffer.alloc(0); // still pending
      if (chunk[i] === LF) {
        i++;
      } else {
        this.bareLineEndings++;
      }
      out[o++] = CR;
      out[o++] = LF;
      this.#pendingCr = false;
    }
    while (i < chunk.length) {
      const b = chunk[i]!;
      if (b === CR) {
        let j = i + 1;
        while (j < chunk.length && chunk[j] === CR) j++;
        if (j === chunk.length) {
          this.#pendingCr = true;
          if (j - i > 1) this.bareLineEndings++;
          break;
        }
        if (chunk[j] === LF) {
          if (j - i > 1) this.bareLineEndings++;
          j++;
        } else {
          this.bareLineEndings++;
        }
        out[o++] = CR;
        out[o++] = LF;
        i = j;
      } else if (b === LF) {
        this.bareLineEndings++;
        out[o++] = CR;
        out[o++] = LF;
        i++;
      } else {
        out[o++] = b;
        i++;
      }
    }
    return out.subarray(0, o);
  }
}

export class LineEndingNormalizer extends Transform {
  readonly #rule = new LineEndings();
  #bytes = 0;
  /** Bytes passed on (normalised). */
  #out = 0;

  constructor(private readonly maxBytes = Infinity) {
    super();
  }

  get bytes(): number {
    return this.#bytes;
  }

  /** Lines that needed fixing (for the log). */
  get bareLineEndings(): number {
    return this.#rule.bareLineEndings;
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    this.#bytes += chunk.length;
    if (this.#bytes > this.maxBytes) {
      done(new MessageTooBig(this.maxBytes));
      return;
    }
    // the limit holds for what goes on too: each bare LF or CR becomes two bytes, so a message of bare
    // line endings under the limit doubled past it, and the next hop (whose limit is ours plus room for
    // headers) refused it with a permanent 552 after we had taken it
    const out = this.#rule.normalize(chunk);
    this.#out += out.length;
    if (this.#out > this.maxBytes) {
      done(new MessageTooBig(this.maxBytes));
      return;
    }
    done(null, out);
  }

  override _flush(done: TransformCallback): void {
    const last = this.#rule.flush();
    if (last && this.#out + last.length > this.maxBytes) {
      done(new MessageTooBig(this.maxBytes));
      return;
    }
    done(null, last);
  }
}
