import { describe, expect, it } from 'vitest';
import { schema } from '@moat/config';
import type { CheckResult } from './checks/types.js';
import { Policy } from './policy.js';
import { decide, type Results } from './verdict.js';

const ctx = {
  id: 'ABC123',
  hostname: 'mx.example.test',
  spamSubjectTag: '***Spam*** ',
  uncheckedSubjectTag: '***UNCHECKED*** ',
  dsnCutoffLevel: 10,
};

function policy(over: Record<string, unknown> = {}) {
  return new Policy(schema.parse({ filter: over }).filter, ['example.test']);
}

const ok = <D>(check: CheckResult['check'], data: D): CheckResult<D> => ({
  check,
  outcome: 'pass',
  detail: 'ok',
  ms: 1,
  data,
});

function results(
  o: {
    score?: number;
    virus?: string;
    virusError?: 'error' | 'limit';
    spamError?: boolean;
    banned?: string;
    badHeader?: string;
  } = {},
): Results {
  const r: Results = {
    virus: ok('virus', { verdict: { kind: 'clean' } }),
    spam: ok('spam', {
      score: o.score ?? 0,
      threshold: 5,
      tests: [{ name: 'T', score: o.score ?? 0, description: 'd' }],
    }),
    banned: ok('banned', { banned: [], notes: [] }),
    badHeader: ok('badHeader', { problems: [] }),
  };
  if (o.virus)
    r.virus = { ...r.virus, outcome: 'fail', data: { verdict: { kind: 'virus', names: [o.virus] } } };
  if (o.virusError === 'error')
    r.virus = {
      ...r.virus,
      outcome: 'error',
      detail: 'clamd: ECONNREFUSED',
      data: { verdict: { kind: 'error', what: 'x' } },
    };
  if (o.virusError === 'limit')
    r.virus = {
      ...r.virus,
      outcome: 'error',
      data: { verdict: { kind: 'limit', what: 'INSTREAM size limit exceeded' } },
    };
  if (o.spamError)
    r.spam = {
      ...r.spam,
      outcome: 'error',
      detail: 'spamd timeout',
      data: { tests: [], skipped: 'timeout' },
    };
  if (o.banned) r.banned = { ...r.banned, outcome: 'fail', data: { banned: [o.banned], notes: [] } };
  if (o.badHeader)
    r.badHeader = { ...r.badHeader, outcome: 'fail', data: { problems: [{ minor: 7, text: o.badHeader }] } };
  return r;
}

const one = (p: Policy, r: Results, to = 'bob@example.test') => decide(r, [p.for(to)], ctx);

describe('levels (>=) and categories', () => {
  const p = policy({ tagLevel: 2, tag2Level: 6.2, killLevel: 6.9 });
  it('below tag: clean, no X-Spam fields; at tag: X-Spam-Flag: NO', () => {
    expect(one(p, results({ score: 1.999 })).headers).not.toContain('X-Spam-Flag');
    const d = one(p, results({ score: 2.0 }));
    expect(d.category).toBe('clean');
    expect(d.action).toBe('pass');
    expect(d.headers).toContain('X-Spam-Flag: NO\r\n');
    expect(d.subjectTag).toBeUndefined();
  });
  it('at tag2: spammy, passed with YES and the subject tag', () => {
    const d = one(p, results({ score: 6.2 }));
    expect(d.category).toBe('spammy');
    expect(d.action).toBe('pass');
    expect(d.headers).toContain('X-Spam-Flag: YES\r\n');
    expect(d.headers).toContain('X-Spam-Report:');
    expect(d.subjectTag).toBe('***Spam*** ');
  });
  it('at kill: spam, 554 5.7.0 Reject, id=<id> - SPAM, quarantined; DSN cutoff recorded', () => {
    const d = one(p, results({ score: 6.9 }));
    expect(d.category).toBe('spam');
    expect(d.action).toBe('reject');
    expect(d.reply).toEqual({ code: 554, lines: ['5.7.0 Reject, id=ABC123 - SPAM'] });
    expect(d.quarantineTo).toEqual(['bob@example.test']);
    expect(d.dsnSuppressed).toBe(false);
    expect(one(p, results({ score: 10 })).dsnSuppressed).toBe(true);
  });
  it('priority: virus over banned over unchecked over spam', () => {
    const all = results({ score: 1000, virus: 'Eicar-Test-Signature', banned: 'a.exe', spamError: true });
    const d = one(p, all);
    expect(d.categories).toEqual(['virus', 'banned', 'unchecked', 'clean']);
    expect(d.reply!.lines).toEqual(['5.7.0 Reject, id=ABC123 - INFECTED: Eicar-Test-Signature']);
    expect(one(p, results({ banned: 'docs.zip/x.pdf.exe' })).reply!.lines).toEqual([
      '5.7.0 Reject, id=ABC123 - BANNED: docs.zip/x.pdf.exe',
    ]);
  });
  it('bad header: passed with X-Moat-Alert (the default destiny)', () => {
    const d = one(p, results({ badHeader: 'Missing required header field: "Date"' }));
    expect(d.category).toBe('badHeader');
    expect(d.action).toBe('pass');
    expect(d.headers).toContain(
      'X-Moat-Alert: BAD HEADER SECTION, Missing required header field: "Date"\r\n',
    );
  });
  it('non-local recipients get no X-Spam fields and no subject tag', () => {
    const d = one(p, results({ score: 6.5 }), 'x@elsewhere.test');
    expect(d.headers).not.toContain('X-Spam-');
    expect(d.subjectTag).toBeUndefined();
    expect(d.headers).toContain('X-Virus-Scanned: ClamAV using moat at mx.example.test\r\n');
  });
});

describe('failure paths: a scanner error, timeout or limit is unchecked, 451 4.3.0', () => {
  const p = policy();
  it('clamd error', () => {
    const d = one(p, results({ virusError: 'error' }));
    expect(d.category).toBe('unchecked');
    expect(d.action).toBe('tempfail');
    expect(d.reply).toEqual({
      code: 451,
      lines: ['4.3.0 Try again later, id=ABC123 - UNCHECKED: virus scanner failure'],
    });
    expect(d.quarantineTo).toEqual([]);
    expect(d.deliverTo).toEqual([]);
  });
  it('clamd limit exceeded', () => {
    expect(one(p, results({ virusError: 'limit' })).reply!.lines[0]).toBe(
      '4.3.0 Try again later, id=ABC123 - UNCHECKED: virus scanner limit exceeded',
    );
  });
  it('spamd timeout', () => {
    expect(one(p, results({ spamError: true })).reply!.lines[0]).toBe(
      '4.3.0 Try again later, id=ABC123 - UNCHECKED: spam scanner failure',
    );
  });
  it('scannerFailure: pass delivers tagged ***UNCHECKED*** with an alert', () => {
    const d = one(policy({ scannerFailure: 'pass' }), results({ spamError: true }));
    expect(d.action).toBe('pass');
    expect(d.subjectTag).toBe('***UNCHECKED*** ');
    expect(d.headers).toContain('X-Moat-Alert: UNCHECKED, spam scanner failure\r\n');
  });
  it('a virus found while spamd failed is still a virus (5xx), never a 4xx', () => {
    expect(one(p, results({ virus: 'V', spamError: true })).reply!.code).toBe(554);
  });
});

describe('destinies, bypass, policy banks, mixed recipients', () => {
  it('discard: 250 2.7.0 Ok, discarded, id=<id> - INFECTED: <name>', () => {
    const d = one(policy({ destinies: { virus: 'discard+quarantine' } }), results({ virus: 'V' }));
    expect(d.reply).toEqual({ code: 250, lines: ['2.7.0 Ok, discarded, id=ABC123 - INFECTED: V'] });
    expect(d.quarantineTo).toEqual(['bob@example.test']);
    expect(d.deliverTo).toEqual([]);
  });
  it('pass+quarantine: delivered with X-Quarantine-ID', () => {
    const d = one(policy({ destinies: { banned: 'pass+quarantine' } }), results({ banned: 'x.exe' }));
    expect(d.action).toBe('pass');
    expect(d.headers).toContain('X-Quarantine-ID: <ABC123>\r\n');
  });
  it('bypass recipients receive spam tagged; a policy bank raises kill for its domain', () => {
    const p = policy({ bypass: ['lover@example.test'], policyBanks: { 'example.test': { killLevel: 50 } } });
    const lover = one(p, results({ score: 1000 }), 'lover@example.test');
    expect(lover.action).toBe('pass');
    expect(lover.subjectTag).toBe('***Spam*** ');
    expect(one(p, results({ score: 20 })).category).toBe('spammy');
  });
  it('mixed: the passing recipients get it, the others are dropped (quarantined), delivery answers', () => {
    const p = policy({ bypass: ['lover@example.test'] });
    const d = decide(results({ virus: 'V' }), [p.for('lover@example.test'), p.for('bob@example.test')], ctx);
    expect(d.action).toBe('pass');
    expect(d.reply).toBeUndefined();
    expect(d.deliverTo).toEqual(['lover@example.test']);
    expect(d.quarantineTo).toEqual(['bob@example.test']);
    expect(d.recipients.map((v) => v.action)).toEqual(['pass', 'discard']);
  });
  it('a bypass recipient gets no message a scanner failed on, whatever else was found (virus, spamd down)', () => {
    const p = policy({ bypass: ['lover@example.test'] });
    const d = one(p, results({ virus: 'V', spamError: true }), 'lover@example.test');
    expect(d.category).toBe('unchecked');
    expect(d.action).toBe('tempfail');
    expect(d.reply?.code).toBe(451);
    // and with nothing else found, the same
    expect(one(p, results({ spamError: true }), 'lover@example.test').action).toBe('tempfail');
  });
  it("the quarantined copy's verdict names the destiny of the recipient it was quarantined for", () => {
    const p = policy({ bypass: ['lover@example.test'] });
    const d = decide(results({ score: 1000 }), [p.for('lover@example.test'), p.for('bob@example.test')], ctx);
    expect(d.quarantineTo).toEqual(['bob@example.test']);
    expect(d.quarantineHeaders).toMatch(/^X-Moat-Verdict: SPAM reject\+quarantine, id=ABC123/);
  });
  it('any tempfail answers 451 for every recipient', () => {
    const p = policy({ policyBanks: { 'slow.test': { destinies: { spam: 'tempfail' } } } });
    const d = decide(results({ score: 100 }), [p.for('a@example.test'), p.for('b@slow.test')], ctx);
    expect(d.action).toBe('tempfail');
    expect(d.reply).toEqual({ code: 451, lines: ['4.7.1 Try again later, id=ABC123 - SPAM'] });
  });
});
