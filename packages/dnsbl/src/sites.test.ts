/**
 * Unit tests, no DNS: postscreen site syntax and its errors, reply filters, error codes, reverse names
 * (IPv4, IPv6 nibbles, IPv4-mapped), the reply map, reply/log texts and thresholds.
 */
import { describe, expect, it } from 'vitest';
import {
  DnsblConfigError,
  listedLine,
  matchesFilter,
  normalizeIp,
  parseFilter,
  parseReplyMap,
  parseSites,
  publicName,
  rankLine,
  replyText,
  reverseName,
  verdict,
  zonesOf,
  isErrorCode,
} from './index.js';

describe('parseSites', () => {
  it('reads the issue and DMS examples verbatim', () => {
    const sites = parseSites(
      'zen.spamhaus.org=127.0.0.[2..11]*3, list.dnswl.org=127.0.[0..255].[1..3]*-3 b.barracudacentral.org*2,' +
        '\n bl.mailspike.net=127.0.0.[2;14;13;12;11;10]  dnsbl.sorbs.net',
    );
    expect(sites.map((s) => [s.zone, s.weight, s.text])).toEqual([
      ['zen.spamhaus.org', 3, 'zen.spamhaus.org=127.0.0.[2..11]*3'],
      ['list.dnswl.org', -3, 'list.dnswl.org=127.0.[0..255].[1..3]*-3'],
      ['b.barracudacentral.org', 2, 'b.barracudacentral.org*2'],
      ['bl.mailspike.net', 1, 'bl.mailspike.net=127.0.0.[2;14;13;12;11;10]'],
      ['dnsbl.sorbs.net', 1, 'dnsbl.sorbs.net'],
    ]);
    expect(sites[0]!.filter).toEqual([[[127, 127]], [[0, 0]], [[0, 0]], [[2, 11]]]);
    expect(sites[2]!.filter).toBeUndefined();
    expect(sites[3]!.filter![3]).toEqual([
      [2, 2],
      [14, 14],
      [13, 13],
      [12, 12],
      [11, 11],
      [10, 10],
    ]);
  });

  it('keeps several entries for one zone apart, takes arrays, normalises case and trailing dots', () => {
    const sites = parseSites(['list.dnswl.org=127.0.[0..255].0*-2', 'LIST.DNSWL.ORG.=127.0.[0..255].1*-3']);
    expect(sites).toHaveLength(2);
    expect(zonesOf(sites)).toEqual(['list.dnswl.org']);
    expect(sites[1]!.text).toBe('list.dnswl.org=127.0.[0..255].1*-3');
    expect(parseSites('')).toEqual([]);
    expect(parseSites(' , ')).toEqual([]);
    expect(parseSites('a.test*+2')[0]!.weight).toBe(2);
    expect(parseSites('a.test=127.0.0.[1;3..5;9]')[0]!.filter![3]).toEqual([
      [1, 1],
      [3, 5],
      [9, 9],
    ]);
  });

  it.each([
    ['zen.test=127.0.0', 'must have four octets'],
    ['zen.test=127.0.0.256', '"256" is not a number'],
    ['zen.test=127.0.0.[11..2]', 'runs backwards'],
    ['zen.test=127.0.0.[2..11', 'unbalanced'],
    ['zen.test=127.0.0.[]', 'must be [n;n..m;...]'],
    ['zen.test=127.0.0.[2;;3]', 'is not a number'],
    ['zen.test=127.0.0.x', '"x" is not a number'],
    ['zen.test*x', 'weight "x" is not a whole number'],
    ['zen.test*1.5', 'is not a whole number'],
    ['zen.test=', 'empty filter'],
    ['zen..test', 'is not a domain name'],
    ['=127.0.0.2', 'is not a domain name'],
    ['zen.test=127.0.0.2*', 'weight "" is not a whole number'],
  ])('rejects %s, naming the entry', (entry, why) => {
    const f = () => parseSites(`ok.test, ${entry}`);
    expect(f).toThrow(DnsblConfigError);
    expect(f).toThrow(`bad dnsbl site "${entry}"`);
    expect(f).toThrow(why);
  });
});

describe('filters', () => {
  it('127.0.0.[2..11]', () => {
    const f = parseFilter('127.0.0.[2..11]');
    expect(['127.0.0.2', '127.0.0.4', '127.0.0.11'].every((a) => matchesFilter(f, a))).toBe(true);
    expect(['127.0.0.1', '127.0.0.12', '127.0.1.2', '128.0.0.2'].some((a) => matchesFilter(f, a))).toBe(
      false,
    );
  });
  it('127.0.[0..255].[1..3]', () => {
    const f = parseFilter('127.0.[0..255].[1..3]');
    expect(['127.0.0.1', '127.0.15.3', '127.0.255.2'].every((a) => matchesFilter(f, a))).toBe(true);
    expect(['127.0.15.0', '127.0.15.4', '127.1.0.1'].some((a) => matchesFilter(f, a))).toBe(false);
  });
  it('[2;14;13]', () => {
    const f = parseFilter('127.0.0.[2;14;13]');
    expect(['127.0.0.2', '127.0.0.13', '127.0.0.14'].every((a) => matchesFilter(f, a))).toBe(true);
    expect(['127.0.0.3', '127.0.0.12', '127.0.0.15'].some((a) => matchesFilter(f, a))).toBe(false);
  });
  it('no filter matches any answer; junk never matches a filter', () => {
    expect(matchesFilter(undefined, '127.0.0.200')).toBe(true);
    expect(matchesFilter(parseFilter('127.0.0.2'), 'not.an.ip.addr')).toBe(false);
    expect(matchesFilter(parseFilter('127.0.0.2'), '127.0.0')).toBe(false);
  });
});

describe('error codes', () => {
  it('127.255.255.0/24 and 127.0.0.255 only', () => {
    expect(
      ['127.255.255.252', '127.255.255.254', '127.255.255.255', '127.255.255.0', '127.0.0.255'].every(
        isErrorCode,
      ),
    ).toBe(true);
    expect(['127.0.0.2', '127.255.254.1', '127.0.1.255', '127.0.0.25'].some(isErrorCode)).toBe(false);
  });
});

describe('reverse names', () => {
  it('IPv4', () => {
    expect(reverseName('192.0.2.99')).toBe('99.2.0.192');
    expect(reverseName('127.0.0.2')).toBe('2.0.0.127');
  });
  it('IPv6 in nibble format, :: expanded', () => {
    // RFC 5782 example
    expect(reverseName('2001:db8:1:2:3:4:567:89ab')).toBe(
      'b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2',
    );
    expect(reverseName('2001:DB8::25')).toBe(
      '5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2',
    );
    expect(reverseName('::1')).toBe(`1${'.0'.repeat(31)}`);
    expect(reverseName('[2001:db8::1%eth0]').split('.')).toHaveLength(32);
  });
  it('IPv4-mapped IPv6 is IPv4', () => {
    expect(reverseName('::ffff:192.0.2.99')).toBe('99.2.0.192');
    expect(reverseName('::FFFF:c000:0263')).toBe('99.2.0.192');
    expect(normalizeIp('::ffff:127.0.0.2')).toBe('127.0.0.2');
    expect(normalizeIp('2001:DB8:0:0::1')).toBe('2001:db8::1');
    // IPv4-compatible (not mapped) stays IPv6
    expect(reverseName('::1.2.3.4')).toBe(`4.0.3.0.2.0.1.0${'.0'.repeat(24)}`);
  });
  it('rejects what is not an address', () => {
    expect(() => reverseName('example.com')).toThrow('not an IP address');
    expect(() => reverseName('1.2.3')).toThrow('not an IP address');
  });
});

describe('reply map', () => {
  it('texts, arrays, objects; unmapped zones keep their name', () => {
    const m = parseReplyMap(
      'abcdef.zen.dq.spamhaus.net=zen.spamhaus.org\n# comment\nkey2.dbl.test  dbl.example, ',
    );
    expect(publicName(m, 'ABCDEF.zen.dq.spamhaus.net')).toBe('zen.spamhaus.org');
    expect(publicName(m, 'key2.dbl.test')).toBe('dbl.example');
    expect(publicName(m, 'other.test')).toBe('other.test');
    expect(publicName(parseReplyMap(['a.test=b.test']), 'a.test')).toBe('b.test');
    expect(publicName(parseReplyMap({ 'a.test.': 'b.test' }), 'a.test')).toBe('b.test');
    expect(parseReplyMap(undefined).size).toBe(0);
  });
  it('names a bad entry', () => {
    expect(() => parseReplyMap('good.test=x, lonely')).toThrow('bad dnsbl reply map entry "lonely"');
    expect(() => parseReplyMap('bad..zone=x')).toThrow(DnsblConfigError);
  });
});

describe('texts and thresholds', () => {
  it("postscreen's and dnsblog's words", () => {
    expect(replyText('192.0.2.1', { listedBy: 'zen.spamhaus.org' })).toBe(
      '550 5.7.1 Service unavailable; client [192.0.2.1] blocked using zen.spamhaus.org',
    );
    expect(replyText('2001:db8::1', 'zen.test', 521)).toBe(
      '521 5.7.1 Service unavailable; client [2001:db8::1] blocked using zen.test',
    );
    expect(rankLine(3, '192.0.2.1', 50123)).toBe('DNSBL rank 3 for [192.0.2.1]:50123');
    expect(listedLine('192.0.2.1', 'zen.test', ['127.0.0.4', '127.0.0.10'])).toBe(
      'addr 192.0.2.1 listed by domain zen.test as 127.0.0.4 127.0.0.10',
    );
  });
  it('>= threshold blocks; <= a negative allowlist threshold allowlists', () => {
    expect(verdict(1)).toBe('block');
    expect(verdict(0)).toBe('neutral');
    expect(verdict(2, { threshold: 3 })).toBe('neutral');
    expect(verdict(-3, { allowlistThreshold: -1 })).toBe('allowlist');
    expect(verdict(-1, { allowlistThreshold: -1 })).toBe('allowlist');
    expect(verdict(0, { allowlistThreshold: -1 })).toBe('neutral');
    expect(verdict(-3)).toBe('neutral');
    expect(verdict(-3, { allowlistThreshold: 0 })).toBe('neutral');
  });
});
