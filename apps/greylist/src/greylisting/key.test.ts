import { describe, expect, it } from 'vitest';
import { clientNetwork, normaliseSender, spfTripletKey, tripletKey } from './key.js';

const SUBNET = { lookupBy: 'subnet', ipv4Cidr: 24, ipv6Cidr: 64 } as const;

describe('sender normalisation (Postgrey do_sender_substitutions)', () => {
  it('lower-cases, strips +extension, removes BATV and replaces all-digit words', () => {
    expect(normaliseSender('Alice@X.Test')).toBe('alice@x.test');
    expect(normaliseSender('a+tag@x')).toBe('a@x');
    expect(normaliseSender('prvs=0123456789=a@x')).toBe('a@x');
    expect(normaliseSender('prvs=a=0123456789@x')).toBe('a@x');
    expect(normaliseSender('bounce-123@x')).toBe('bounce-#@x');
    expect(normaliseSender('bounce-456@x')).toBe('bounce-#@x');
    expect(normaliseSender('list-12-34.ab56@x')).toBe('list-#-#.ab56@x');
    expect(normaliseSender('')).toBe('');
  });
  it('gives a+tag@x, prvs=...=a@x and a@x one key', () => {
    const k = (s: string) => tripletKey('192.0.2.0', s, 'bob@example.test');
    expect(k('a+tag@x')).toBe(k('a@x'));
    expect(k('prvs=0123456789=a@x')).toBe(k('a@x'));
    expect(k('a@x')).toBe('192.0.2.0/a@x/bob@example.test');
  });
});

describe('client network', () => {
  it('is the /24 for IPv4 and the /64 for IPv6, the address with lookupBy host', () => {
    expect(clientNetwork('192.0.2.77', SUBNET)).toBe('192.0.2.0');
    expect(clientNetwork('::ffff:192.0.2.77', SUBNET)).toBe('192.0.2.0');
    expect(clientNetwork('2001:db8:1:2:3:4:5:6', SUBNET)).toBe('2001:db8:1:2::');
    expect(clientNetwork('2001:db8::1', SUBNET)).toBe('2001:db8::');
    expect(clientNetwork('192.0.2.77', { ...SUBNET, lookupBy: 'host' })).toBe('192.0.2.77');
    expect(clientNetwork('192.0.2.77', { ...SUBNET, ipv4Cidr: 16 })).toBe('192.0.0.0');
  });
  it('two clients of one /24 (or /64) share a triplet', () => {
    const a = tripletKey(clientNetwork('127.0.0.2', SUBNET), 's@x', 'r@example.test');
    const b = tripletKey(clientNetwork('127.0.0.3', SUBNET), 's@x', 'r@example.test');
    expect(a).toBe(b);
    const c = tripletKey(clientNetwork('2001:db8::1', SUBNET), 's@x', 'r@example.test');
    const d = tripletKey(clientNetwork('2001:db8::ffff:1', SUBNET), 's@x', 'r@example.test');
    expect(c).toBe(d);
  });
  it('an SPF-keyed triplet names the domain', () => {
    expect(spfTripletKey('pool.test', 'News+1@Pool.test', 'R@example.test')).toBe(
      'spf:pool.test/news@pool.test/r@example.test',
    );
  });
});
