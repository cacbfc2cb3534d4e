import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { LineEndingNormalizer, MessageTooBig } from './line-endings.js';

async function run(chunks: string[], max?: number): Promise<{ out: string; bare: number }> {
  const n = new LineEndingNormalizer(max);
  const parts: Buffer[] = [];
  for await (const c of Readable.from(chunks.map((s) => Buffer.from(s, 'latin1'))).pipe(n))
    parts.push(c as Buffer);
  return { out: Buffer.concat(parts).toString('latin1'), bare: n.bareLineEndings };
}

describe('LineEndingNormalizer (the one bare CR/LF rule)', () => {
  it('passes clean CRLF text through untouched', async () => {
    expect(await run(['a\r\nb\r\n', 'c\r\n'])).toEqual({ out: 'a\r\nb\r\nc\r\n', bare: 0 });
  });
  it('turns a lone LF into CRLF', async () => {
    expect(await run(['a\nb\r\n'])).toEqual({ out: 'a\r\nb\r\n', bare: 1 });
  });
  it('turns CR CR LF (smtp-source -F with CRLF files) into one CRLF', async () => {
    expect(await run(['Subject: x\r\r\nbody\r\n'])).toEqual({ out: 'Subject: x\r\nbody\r\n', bare: 1 });
  });
  it('turns a lone CR into CRLF', async () => {
    expect(await run(['a\rb\r\n'])).toEqual({ out: 'a\r\nb\r\n', bare: 1 });
  });
  it('keeps state across chunk boundaries', async () => {
    expect((await run(['a\r', '\nb\r', 'c\r', '\r', '\n'])).out).toBe('a\r\nb\r\nc\r\n');
    expect((await run(['a\r'])).out).toBe('a\r\n');
  });
  it('makes the smuggling sequences ordinary lines', async () => {
    expect((await run(['x\n.\nMAIL FROM:<e@x>\r\n'])).out).toBe('x\r\n.\r\nMAIL FROM:<e@x>\r\n');
    expect((await run(['x\r.\rMAIL\r\n'])).out).toBe('x\r\n.\r\nMAIL\r\n');
  });
  it('fails with MessageTooBig past the limit', async () => {
    await expect(run(['x'.repeat(10), 'y'.repeat(10)], 15)).rejects.toBeInstanceOf(MessageTooBig);
  });
  it('fails with MessageTooBig when the normalised message passes the limit', async () => {
    // 8 bytes received, 16 passed on: the next hop's limit (ours plus room for headers) is no longer kept
    await expect(run(['\n'.repeat(8)], 10)).rejects.toBeInstanceOf(MessageTooBig);
    await expect(run(['a\r\n'.repeat(3), 'b\r'], 10)).rejects.toBeInstanceOf(MessageTooBig);
    expect((await run(['a\n', 'b\r\n'], 7)).out).toBe('a\r\nb\r\n');
  });
});
