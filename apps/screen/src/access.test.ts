import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { AccessList } from './access.js';

const MYNETWORKS = ['127.0.0.0/8', '::1/128'];

describe('AccessList (postscreen_access_list)', () => {
  it('evaluates in order, first match wins; no match is dunno', () => {
    const l = new AccessList(
      [
        'reject 192.0.2.66',
        'permit 192.0.2.0/24',
        'dunno 198.51.100.1',
        'reject 198.51.100.0/24',
        'permit_mynetworks',
      ],
      MYNETWORKS,
    );
    expect(l.check('192.0.2.66')).toBe('reject');
    expect(l.check('192.0.2.7')).toBe('permit');
    expect(l.check('::ffff:192.0.2.7')).toBe('permit');
    expect(l.check('198.51.100.1')).toBe('dunno');
    expect(l.check('198.51.100.2')).toBe('reject');
    expect(l.check('127.0.0.9')).toBe('permit');
    expect(l.check('::1')).toBe('permit');
    expect(l.check('203.0.113.1')).toBe('dunno');
    expect(new AccessList([], MYNETWORKS).check('127.0.0.1')).toBe('dunno');
  });

  it('cidr: tables: Postfix order, dunno goes on to the next entry, reloaded on change', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moat-access-'));
    const file = path.join(dir, 'access.cidr');
    fs.writeFileSync(file, '# comment\n192.0.2.1 dunno\n192.0.2.0/24 reject\npermit 2001:db8::/32\n');
    let now = 0;
    const warnings: string[] = [];
    const l = new AccessList(
      [`cidr:${file}`, 'permit 192.0.2.1'],
      MYNETWORKS,
      (m) => warnings.push(m),
      () => now,
    );
    expect(l.check('192.0.2.1')).toBe('permit');
    expect(l.check('192.0.2.2')).toBe('reject');
    expect(l.check('2001:db8::5')).toBe('permit');
    fs.writeFileSync(file, '192.0.2.0/24 permit\n');
    fs.utimesSync(file, new Date(), new Date(Date.now() + 5000));
    expect(l.check('192.0.2.2')).toBe('reject'); // checked at most once a second
    now = 2000;
    expect(l.check('192.0.2.2')).toBe('permit');
    fs.writeFileSync(file, 'nonsense here\n');
    fs.utimesSync(file, new Date(), new Date(Date.now() + 10_000));
    now = 4000;
    expect(l.check('192.0.2.2')).toBe('permit'); // the last good copy
    expect(warnings.some((w) => w.startsWith('warning: access table'))).toBe(true);
  });

  it('a missing or bad table at start is an error naming it', () => {
    expect(() => new AccessList(['cidr:/nonexistent/file'], MYNETWORKS)).toThrow(/cidr:\/nonexistent\/file/);
    expect(() => new AccessList(['permit nonsense'], MYNETWORKS)).toThrow(/accessList\[0\]/);
  });
});
