/**
 * dot-stuff: SMTP transparency (RFC 5321 4.5.2) for a body that arrives in chunks. The body has CRLF
 * line endings (the listener's rule); a "." at the start of any line gets a second one. The last chunk
 * is held back so the caller can write it together with the final "CRLF.CRLF" in one write.
 */
const DOT = 0x2e;
const LF = 0x0a;

export class DotStuffer {
  #atLineStart = true;
  #endsWithCrlf = false;
  #bytes = 0;

  get bytes(): number {
    return this.#bytes;
  }

  /** The chunk with every line-initial dot doubled. */
  stuff(chunk: Buffer): Buffer {
    if (chunk.length === 0) return chunk;
    this.#bytes += chunk.length;
    const parts: Buffer[] = [];
    let from = 0;
    if (this.#atLineStart && chunk[0] === DOT) {
      parts.push(Buffer.from('.'));
    }
    for (let i = chunk.indexOf(LF); i !== -1 && i < chunk.length - 1; i = chunk.indexOf(LF, i + 1)) {
      if (chunk[i + 1] === DOT) {
        parts.push(chunk.subarray(from, i + 1), Buffer.from('.'));
        from = i + 1;
      }
    }
    this.#atLineStart = chunk[chunk.length - 1] === LF;
    this.#endsWithCrlf = chunk.length >= 2 ? chunk[chunk.length - 2] === 0x0d && this.#atLineStart : false;
    if (parts.length === 0) return chunk;
    parts.push(chunk.subarray(from));
    return Buffer.concat(parts);
  }

  /** What ends the DATA: the end-of-data line, with a CRLF first if the body did not end with one. */
  terminator(): Buffer {
    return Buffer.from(this.#bytes === 0 || this.#endsWithCrlf ? '.\r\n' : '\r\n.\r\n');
  }
}
