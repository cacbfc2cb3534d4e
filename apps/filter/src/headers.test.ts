import { describe, expect, it } from 'vitest';
import { amavisNumber, fold, spamHeaders, spamLevel, spamStatusValue } from './headers.js';

describe("amavis' header formats", () => {
  it('prints numbers as 0+sprintf("%.3f")', () => {
    expect(amavisNumber(-2.877)).toBe('-2.877');
    expect(amavisNumber(-1.0)).toBe('-1');
    expect(amavisNumber(2.0)).toBe('2');
    expect(amavisNumber(6.2)).toBe('6.2');
    expect(amavisNumber(0.0014)).toBe('0.001');
    expect(amavisNumber(-0.0001)).toBe('0');
    expect(amavisNumber(1000)).toBe('1000');
  });

  it('X-Spam-Level: one star per whole point, at most 64, none below 1', () => {
    expect(spamLevel(-3)).toBe('');
    expect(spamLevel(0.9)).toBe('');
    expect(spamLevel(2.9)).toBe('**');
    expect(spamLevel(1000)).toBe('*'.repeat(64));
  });

  it('folds X-Spam-Status exactly like amavis (the lrz.de header)', () => {
    const tests = [
      ['ALL_TRUSTED', -1],
      ['BAYES_00', -1.9],
      ['DMARC_ADKIM_RELAXED', 0.001],
      ['DMARC_ASPF_RELAXED', 0.001],
    ].map(([name, score]) => ({ name: name as string, score: score as number, description: '' }));
    const value = spamStatusValue({ score: -2.877, tests, tagLevel: -999, tag2Level: 5 });
    expect(fold('X-Spam-Status', value)).toBe(
      'X-Spam-Status: No, score=-2.877 tagged_above=-999 required=5\r\n' +
        '\ttests=[ALL_TRUSTED=-1, BAYES_00=-1.9, DMARC_ADKIM_RELAXED=0.001,\r\n' +
        '\tDMARC_ASPF_RELAXED=0.001]\r\n',
    );
  });

  it('adds nothing below the tag level; NO at tag; YES, X-Spam-Report at tag2 (required= is tag2)', () => {
    const tests = [
      { name: 'GTUBE', score: 1000, description: 'BODY: Generic Test for Unsolicited Bulk Email' },
    ];
    expect(spamHeaders({ score: 1.99, tests: [], tagLevel: 2, tag2Level: 6.2 })).toBe('');
    expect(spamHeaders({ score: 2.0, tests: [], tagLevel: 2, tag2Level: 6.2 })).toBe(
      'X-Spam-Flag: NO\r\nX-Spam-Score: 2\r\nX-Spam-Level: **\r\n' +
        'X-Spam-Status: No, score=2 tagged_above=2 required=6.2 tests=[]\r\n',
    );
    const yes = spamHeaders({ score: 1000, tests, tagLevel: 2, tag2Level: 6.2 });
    expect(yes).toContain('X-Spam-Flag: YES\r\n');
    expect(yes).toContain(
      'X-Spam-Status: Yes, score=1000 tagged_above=2 required=6.2 tests=[GTUBE=1000]\r\n',
    );
    expect(yes).toContain(
      'X-Spam-Report: \r\n\t*  1000 GTUBE BODY: Generic Test for Unsolicited Bulk Email\r\n',
    );
  });
});
