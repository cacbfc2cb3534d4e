import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { readHead, rewriteHead } from './message.js';

describe('the header section', () => {
  it('reads it from a stream in pieces and says where the rest starts', async () => {
    const raw =
      'Subject: a\r\nX-Spam-Flag: YES\r\nX-Spam-Status: Yes,\r\n\tscore=9\r\nFrom: x\r\n\r\nbody\r\n';
    const pieces = raw.match(/.{1,5}/gs)!.map((s) => Buffer.from(s));
    const h = await readHead(Readable.from(pieces));
    expect(h.complete).toBe(true);
    expect(raw.slice(h.bodyOffset)).toBe('\r\nbody\r\n');
    expect(rewriteHead(h.head, { subjectTag: '***Spam*** ' }).toString()).toBe(
      'Subject: ***Spam*** a\r\nFrom: x\r\n',
    );
  });
  it('adds a Subject when there is none; says incomplete when no empty line comes', async () => {
    expect(rewriteHead(Buffer.from('From: x\r\n'), { subjectTag: '***Spam*** ' }).toString()).toBe(
      'From: x\r\nSubject: ***Spam***\r\n',
    );
    const h = await readHead(Readable.from([Buffer.from('A: b\r\n'.repeat(100))]), 200);
    expect(h.complete).toBe(false);
  });
});
