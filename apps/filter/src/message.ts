/**
 * message: the header section of the spooled message, read once (bounded), and the forwarded copy's
 * header section: outside X-Spam-* fields removed (amavis' $remove_existing_spam_headers) and the
 * subject tag prepended. The body is never read into memory: the forwarded copy is the new header
 * section followed by the spool streamed from the end of the old one.
 */
import type { Readable } from 'node:stream';

export const MAX_HEAD_BYTES = 1024 * 1024;

export interface Head {
  /** The header fields, each ending in CRLF, without the empty line. */
  head: Buffer;
  /** Where the rest of the message (the empty line, then the body) starts. */
  bodyOffset: number;
  /** False when no empty line ended the header section within MAX_HEAD_BYTES. */
  complete: boolean;
}

/** The header section of a message held in memory (the first `max` bytes are looked at). */
export function headOf(message: Buffer, max = MAX_HEAD_BYTES): Head {
  if (message[0] === 0x0d && message[1] === 0x0a)
    return { head: Buffer.alloc(0), bodyOffset: 0, complete: true };
  const end = message.indexOf('\r\n\r\n', 0, 'latin1');
  if (end >= 0) return { head: message.subarray(0, end + 2), bodyOffset: end + 2, complete: true };
  // a message of headers only, or one whose header section never ends
  const whole = message.length <= max;
  return {
    head: whole ? message : message.subarray(0, max),
    bodyOffset: whole ? message.length : max,
    complete: whole,
  };
}

/** Reads the header section from the start of a message stream, then stops reading. */
export async function readHead(stream: Readable, max = MAX_HEAD_BYTES): Promise<Head> {
  let buf: Buffer = Buffer.alloc(0);
  try {
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      const from = Math.max(0, buf.length - 3);
      buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
      if (buf.subarray(0, 2).toString('latin1') === '\r\n')
        return { head: Buffer.alloc(0), bodyOffset: 0, complete: true };
      const end = buf.indexOf('\r\n\r\n', from, 'latin1');
      if (end >= 0) return { head: buf.subarray(0, end + 2), bodyOffset: end + 2, complete: true };
      if (buf.length > max) break;
    }
  } finally {
    stream.destroy();
  }
  return headOf(buf, max);
}

interface Field {
  name: string;
  raw: string;
}

function fields(head: Buffer): Field[] {
  const out: Field[] = [];
  const text = head.toString('latin1');
  for (const line of text.split(/(?<=\r\n)/)) {
    if (!line) continue;
    const last = out[out.length - 1];
    if (/^[ \t]/.test(line) && last) last.raw += line;
    else out.push({ name: (/^([^:\s]+)\s*:/.exec(line)?.[1] ?? '').toLowerCase(), raw: line });
  }
  return out;
}

/**
 * The message's Message-ID as written (unfolded, at most 200 characters), for the log line: what a
 * sender or a mailbox owner quotes when asking what became of a message. undefined when there is none.
 */
export function messageIdOf(head: Buffer): string | undefined {
  const f = fields(head).find((x) => x.name === 'message-id');
  if (!f) return undefined;
  const value = f.raw
    .slice(f.raw.indexOf(':') + 1)
    .replace(/\r\n[ \t]+/g, ' ')
    .trim();
  return value ? value.slice(0, 200) : undefined;
}

/** The header fields the filter writes (lower case): removed when they come from outside. */
const OURS = /^(x-spam-|x-moat-|x-quarantine-id$)/;

/**
 * The header section of the forwarded copy: X-Spam-*, X-Moat-* and X-Quarantine-ID fields from
 * outside removed, and `subjectTag`
 * (when given) prepended to the Subject (a Subject is added when there is none). Bytes are kept as
 * they came (latin1 round trip), 8-bit ones included.
 */
export function rewriteHead(head: Buffer, o: { subjectTag?: string | undefined }): Buffer {
  // ours, from outside: X-Spam-* (as amavis), and the fields only the filter writes, so a sender
  // cannot forge a verdict or alert (X-Moat-*) or a quarantine id the mailbox owner would trust
  const kept = fields(head).filter((f) => !OURS.test(f.name));
  if (o.subjectTag) {
    const tag = Buffer.from(o.subjectTag, 'utf8').toString('latin1');
    const subject = kept.find((f) => f.name === 'subject');
    if (subject) subject.raw = subject.raw.replace(/^([^:]*:[ \t]?)/, `$1${tag}`);
    else kept.push({ name: 'subject', raw: `Subject: ${tag.trimEnd()}\r\n` });
  }
  return Buffer.from(kept.map((f) => f.raw).join(''), 'latin1');
}
