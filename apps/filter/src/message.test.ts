import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { headOf, messageIdOf, readHead, rewriteHead } from './message.js';

describe('the header section', () => {
  it('reads it from a stream in pieces and says where the rest starts', async () => {
    const raw =
      'Subject: a\r\nX-Spam-Flag: YES\r\nX-Spam-Status: Yes,\r\n\tscore=9\r\nX-Moat-Results: virus=pass (forged)\r\n' +
      'X-Quarantine-ID: <FORGED>\r\nX-Virus-Scanned: at the sender\r\nFrom: x\r\n\r\nbody\r\n';
    const pieces = raw.match(/.{1,5}/gs)!.map((s) => Buffer.from(s));
    const h = await readHead(Readable.from(pieces));
    expect(h.complete).toBe(true);
    expect(raw.slice(h.bodyOffset)).toBe('\r\nbody\r\n');
    // X-Spam-*, X-Moat-* and X-Quarantine-ID from outside go (only the filter writes them)
    expect(rewriteHead(h.head, { subjectTag: '***Spam*** ' }).toString()).toBe(
      'Subject: ***Spam*** a\r\nX-Virus-Scanned: at the sender\r\nFrom: x\r\n',
    );
  });
  it('adds a Subject when there is none; says incomplete when no empty line comes', async () => {
    expect(rewriteHead(Buffer.from('From: x\r\n'), { subjectTag: '***Spam*** ' }).toString()).toBe(
      'From: x\r\nSubject: ***Spam***\r\n',
    );
    const h = await readHead(Readable.from([Buffer.from('A: b\r\n'.repeat(100))]), 200);
    expect(h.complete).toBe(false);
  });
  it('finds the same header section in memory as from a stream', async () => {
    for (const raw of [
      'Subject: a\r\nFrom: x\r\n\r\nbody\r\n',
      '\r\nbody only\r\n',
      'A: b\r\nC: d\r\n',
      'A: b\r\n'.repeat(100),
    ]) {
      const buf = Buffer.from(raw);
      const pieces = raw.match(/.{1,7}/gs)!.map((s) => Buffer.from(s));
      expect(headOf(buf, 200), raw).toEqual(await readHead(Readable.from(pieces), 200));
    }
    const h = headOf(Buffer.from('Subject: a\r\n\r\nbody'));
    expect([h.head.toString(), h.bodyOffset, h.complete]).toEqual(['Subject: a\r\n', 12, true]);
  });
});

describe('the Message-ID for the log line', () => {
  it('is read unfolded, whatever the field name case; undefined when absent or empty', () => {
    expect(messageIdOf(Buffer.from('Subject: a\r\nmessage-ID:\r\n <abc@x.test>\r\n'))).toBe('<abc@x.test>');
    expect(messageIdOf(Buffer.from('Message-Id: <a@b>\r\nMessage-Id: <c@d>\r\n'))).toBe('<a@b>');
    expect(messageIdOf(Buffer.from('Subject: a\r\n'))).toBeUndefined();
    expect(messageIdOf(Buffer.from('Message-ID:  \r\n'))).toBeUndefined();
    expect(messageIdOf(Buffer.from(`Message-ID: <${'x'.repeat(500)}>\r\n`))).toHaveLength(200);
  });
});
