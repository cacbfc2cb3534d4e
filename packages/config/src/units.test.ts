import { describe, expect, it } from 'vitest';
import { formatDuration, NetworkList, parseCidr, parseDuration, parseHostPort, parseSize } from './units.js';

describe('units', () => {
  it('parses Postfix durations', () => {
    expect(parseDuration('300s')).toBe(300_000);
    expect(parseDuration('5m')).toBe(300_000);
    expect(parseDuration('1d')).toBe(86_400_000);
    expect(parseDuration('250ms')).toBe(250);
    expect(parseDuration('100')).toBe(100_000);
    expect(parseDuration('6x')).toBeUndefined();
    expect(parseDuration('-1s')).toBeUndefined();
    expect(formatDuration(300_000)).toBe('5m');
    expect(formatDuration(100_000)).toBe('100s');
    expect(formatDuration(1500)).toBe('1500ms');
  });
  it('parses sizes', () => {
    expect(parseSize('50MB')).toBe(50 * 1024 * 1024);
    expect(parseSize('10240000')).toBe(10_240_000);
    expect(parseSize('512k')).toBe(524_288);
    expect(parseSize('lots')).toBeUndefined();
  });
  it('parses host:port', () => {
    expect(parseHostPort('127.0.0.1:10024')).toEqual({ host: '127.0.0.1', port: 10024 });
    expect(parseHostPort('[::1]:25')).toEqual({ host: '::1', port: 25 });
    expect(parseHostPort('localhost')).toBeUndefined();
    expect(parseHostPort('a:99999')).toBeUndefined();
  });
  it('matches networks, IPv4-mapped IPv6 included', () => {
    const l = new NetworkList(['127.0.0.0/8', '::1/128', '192.0.2.0/24']);
    expect(l.has('127.0.0.2')).toBe(true);
    expect(l.has('::ffff:127.0.0.1')).toBe(true);
    expect(l.has('::1')).toBe(true);
    expect(l.has('192.0.2.200')).toBe(true);
    expect(l.has('10.0.0.1')).toBe(false);
    expect(new NetworkList([]).has('127.0.0.1')).toBe(false);
    expect(parseCidr('10.0.0.0/33')).toBeUndefined();
    expect(parseCidr('nonsense')).toBeUndefined();
  });
  it('gives the same answers when asked again, and past its memo of 4096 addresses', () => {
    const l = new NetworkList(['10.1.0.0/16']);
    for (let round = 0; round < 2; round++) {
      for (let i = 0; i < 5000; i++) {
        const inside = `10.1.${(i >> 8) & 255}.${i & 255}`;
        const outside = `10.2.${(i >> 8) & 255}.${i & 255}`;
        expect(l.has(inside)).toBe(true);
        expect(l.has(outside)).toBe(false);
      }
    }
    expect(l.has('not an address')).toBe(false);
  });
});
