import { describe, expect, it } from 'vitest';
import { relayCheck } from './relay.js';

const domains = new Set(['example.test']);

describe('relayCheck', () => {
  it.each([
    ['user@example.test', true],
    ['User@EXAMPLE.TEST', true],
    ['user@example.test.', true],
    ['postmaster', true],
    ['user@other.test', false],
    ['user@sub.example.test', false],
    ['@relay.test:user@example.test', true],
    ['@example.test:user@other.test', false],
    ['"user@other.test"@example.test', false],
    ['user%other.test@example.test', false],
    ['other.test!user@example.test', false],
    ['"john doe"@example.test', true],
    ['user@[127.0.0.1]', false],
  ])('%s -> %s', (address, ok) => {
    expect(relayCheck(address, domains).ok).toBe(ok);
  });
});
