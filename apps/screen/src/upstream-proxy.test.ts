import { describe, expect, it } from 'vitest';
import { parseProxyHeader } from './upstream-proxy.js';

describe('parseProxyHeader', () => {
  it('reads v1 (TCP4, TCP6, UNKNOWN) and keeps the bytes after it', () => {
    const r = parseProxyHeader(Buffer.from('PROXY TCP4 198.51.100.7 192.0.2.25 40001 25\r\nEHLO x\r\n'));
    expect(r).toMatchObject({
      kind: 'ok',
      addresses: {
        source: { address: '198.51.100.7', port: 40001 },
        destination: { address: '192.0.2.25', port: 25 },
      },
    });
    expect(r.kind === 'ok' && r.rest.toString()).toBe('EHLO x\r\n');
    expect(parseProxyHeader(Buffer.from('PROXY TCP6 2001:db8::25 2001:db8::1 1 25\r\n'))).toMatchObject({
      kind: 'ok',
      addresses: { source: { address: '2001:db8::25' } },
    });
    expect(parseProxyHeader(Buffer.from('PROXY UNKNOWN\r\n'))).toMatchObject({ kind: 'ok', addresses: {} });
    expect(parseProxyHeader(Buffer.from('PROXY TCP4 1.2.3.4'))).toEqual({ kind: 'more' });
    expect(parseProxyHeader(Buffer.from('PRO'))).toEqual({ kind: 'more' });
    expect(parseProxyHeader(Buffer.from('PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n')).kind).toBe('error');
    expect(parseProxyHeader(Buffer.from('EHLO x\r\n')).kind).toBe('error');
  });

  it('reads v2 (IPv4, IPv6, LOCAL)', () => {
    const sig = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
    const v4 = Buffer.concat([
      sig,
      Buffer.from([0x21, 0x11, 0, 12, 198, 51, 100, 7, 192, 0, 2, 25, 0x9c, 0x41, 0, 25]),
      Buffer.from('X'),
    ]);
    const r = parseProxyHeader(v4);
    expect(r).toMatchObject({ kind: 'ok', addresses: { source: { address: '198.51.100.7', port: 40001 } } });
    expect(r.kind === 'ok' && r.rest.toString()).toBe('X');
    expect(parseProxyHeader(v4.subarray(0, 20))).toEqual({ kind: 'more' });
    const v6 = Buffer.alloc(52);
    sig.copy(v6);
    v6[12] = 0x21;
    v6[13] = 0x21;
    v6.writeUInt16BE(36, 14);
    Buffer.from('20010db8000000000000000000000025', 'hex').copy(v6, 16);
    v6.writeUInt16BE(1234, 48);
    expect(parseProxyHeader(v6)).toMatchObject({
      kind: 'ok',
      addresses: { source: { address: '2001:db8::25', port: 1234 } },
    });
    const local = Buffer.concat([sig, Buffer.from([0x20, 0x00, 0, 0])]);
    expect(parseProxyHeader(local)).toMatchObject({ kind: 'ok', addresses: {} });
  });
});
