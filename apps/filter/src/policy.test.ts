import { describe, expect, it } from 'vitest';
import { schema } from '@moat/config';
import { parseDestiny, Policy } from './policy.js';

const filter = (over: Record<string, unknown> = {}) => schema.parse({ filter: over }).filter;

describe('policy per recipient', () => {
  it('parses destinies, quarantine combinable', () => {
    expect(parseDestiny('reject+quarantine')).toEqual({ action: 'reject', quarantine: true });
    expect(parseDestiny('quarantine+discard')).toEqual({ action: 'discard', quarantine: true });
    expect(parseDestiny('pass')).toEqual({ action: 'pass', quarantine: false });
  });

  it("has amavis' sample levels and the issue's default destinies", () => {
    const p = new Policy(filter(), ['example.test']).for('a@example.test');
    expect(p.levels).toEqual({ tag: 2, tag2: 6.2, kill: 6.9 });
    expect(p.destinies.virus).toEqual({ action: 'reject', quarantine: true });
    expect(p.destinies.banned).toEqual({ action: 'reject', quarantine: true });
    expect(p.destinies.spam).toEqual({ action: 'reject', quarantine: true });
    expect(p.destinies.unchecked).toEqual({ action: 'tempfail', quarantine: false });
    expect(p.destinies.spammy.action).toBe('pass');
    expect(p.destinies.badHeader.action).toBe('pass');
    expect(p.local).toBe(true);
    expect(p.bypass).toBe(false);
  });

  it('applies the policy bank of the recipient domain, bypass by address or @domain, locality', () => {
    const c = filter({
      policyBanks: { 'lists.example.test': { killLevel: 12, destinies: { spam: 'discard+quarantine' } } },
      bypass: ['Abuse@example.test', '@postmaster.example.test'],
      scannerFailure: 'pass',
    });
    const policy = new Policy(c, ['example.test', 'lists.example.test']);
    const l = policy.for('x@lists.example.test');
    expect(l.levels.kill).toBe(12);
    expect(l.levels.tag2).toBe(6.2);
    expect(l.destinies.spam).toEqual({ action: 'discard', quarantine: true });
    expect(l.destinies.virus.action).toBe('reject');
    expect(l.destinies.unchecked.action).toBe('pass');
    expect(policy.for('abuse@example.test').bypass).toBe(true);
    expect(policy.for('x@postmaster.example.test').bypass).toBe(true);
    expect(policy.for('x@elsewhere.test').local).toBe(false);
  });

  it('finds a bank written in capitals, and bypasses user+ext as user', () => {
    const c = filter({
      policyBanks: { 'Lists.Example.TEST': { killLevel: 50 } },
      bypass: ['lover@example.test'],
    });
    const policy = new Policy(c, ['example.test', 'lists.example.test']);
    expect(policy.for('x@lists.example.test').levels.kill).toBe(50);
    expect(policy.for('Lover+news@example.test').bypass).toBe(true);
    expect(policy.for('lover2@example.test').bypass).toBe(false);
  });
});
