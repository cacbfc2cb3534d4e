import { describe, expect, it } from 'vitest';
import { detectType } from './mime.js';

describe('detectType: magic bytes named as amavis names them', () => {
  const pad = (head: number[] | string, at = 0) => {
    const b = Buffer.alloc(at + 64, 0x20);
    (typeof head === 'string' ? Buffer.from(head, 'latin1') : Buffer.from(head)).copy(b, at);
    return b;
  };
  it.each([
    ['.exe-ms', pad('MZ')],
    ['.elf', pad([0x7f, 0x45, 0x4c, 0x46])],
    ['.macho', pad([0xfe, 0xed, 0xfa, 0xce])],
    ['.macho', pad([0xcf, 0xfa, 0xed, 0xfe])],
    ['.zip', pad('PK\x03\x04')],
    ['.zip', pad('PK\x05\x06')],
    ['.gz', pad([0x1f, 0x8b])],
    ['.bz2', pad('BZh')],
    ['.rar', pad('Rar!\x1a\x07')],
    ['.7z', pad([0x37, 0x7a, 0xbc, 0xaf, 0x27, 0x1c])],
    ['.cab', pad('MSCF')],
    ['.doc', pad([0xd0, 0xcf, 0x11, 0xe0, 0xa1, 0xb1, 0x1a, 0xe1])],
    ['.pdf', pad('%PDF-1.7')],
    ['.tar', pad('ustar', 257)],
    ['.sh', pad('#!/bin/sh')],
  ])('%s', (type, head) => {
    expect(detectType(head)).toBe(type);
  });

  it('knows nothing of plain text, and a signature cut short is no match', () => {
    expect(detectType(pad('Hello'))).toBeUndefined();
    expect(detectType(Buffer.from('PK\x03', 'latin1'))).toBeUndefined();
    expect(detectType(Buffer.from('ustar', 'latin1'))).toBeUndefined(); // not at offset 257
    expect(detectType(Buffer.alloc(0))).toBeUndefined();
  });
});
