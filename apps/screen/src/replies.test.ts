import { describe, expect, it } from 'vitest';
import { escapeBytes, logText, replies, secs } from './replies.js';

describe('replies and log texts (postscreen words)', () => {
  it('has the exact reply texts', () => {
    expect(replies.dnsbl('192.0.2.1', 'zen.test', 'enforce')).toBe(
      '550 5.7.1 Service unavailable; client [192.0.2.1] blocked using zen.test',
    );
    expect(replies.dnsbl('192.0.2.1', 'zen.test', 'drop')).toBe(
      '521 5.7.1 Service unavailable; client [192.0.2.1] blocked using zen.test',
    );
    expect(replies.pregreet.drop).toBe('521 5.5.1 Protocol error');
    expect(replies.tooManyConnections).toBe('421 4.7.0 Error: too many connections');
    expect(replies.screeningBusy).toBe('421 4.3.2 All screening ports are busy');
  });

  it('escapes pregreet bytes as C does and prints seconds as postscreen', () => {
    expect(escapeBytes(Buffer.from('EHLO x\r\n\t\\\x00\xff', 'latin1'))).toBe(
      'EHLO x\\r\\n\\t\\\\\\000\\377',
    );
    expect(escapeBytes(Buffer.alloc(200, 0x41))).toHaveLength(100);
    expect(secs(50)).toBe('0.05');
    expect(logText.pregreet(8, 120, '[192.0.2.1]:25', 'HELO x\\r\\n')).toBe(
      'PREGREET 8 after 0.12 from [192.0.2.1]:25: HELO x\\r\\n',
    );
    expect(logText.hangup(1500, '[192.0.2.1]:25', 'tests before SMTP handshake')).toBe(
      'HANGUP after 1.50 from [192.0.2.1]:25 in tests before SMTP handshake',
    );
  });
});
