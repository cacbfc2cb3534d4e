import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { compileRecipients } from './recipients.js';
import { parseLines, WatchedList } from './watched-list.js';
import { compileClientWhitelist, compileRecipientWhitelist, defaultWhitelistFile } from './whitelist.js';

describe('client whitelist (postgrey_whitelist_clients syntax)', () => {
  const w = compileClientWhitelist([
    'example.com',
    '/^mail\\d+\\.x\\.test$/',
    '192.0.2.1',
    '198.51.100',
    '10.1',
    '172',
    '203.0.113.0/28',
    '2001:db8::/32',
  ]);
  it('matches host names by domain and subdomain, and by regexp', () => {
    expect(w.matchName('example.com')).toBe('example.com');
    expect(w.matchName('mx1.mail.Example.COM')).toBe('example.com');
    expect(w.matchName('notexample.com')).toBeUndefined();
    expect(w.matchName('mail12.x.test')).toBe('/^mail\\d+\\.x\\.test$/');
    expect(w.matchName('unknown')).toBeUndefined();
    expect(w.hasNames).toBe(true);
  });
  it('matches addresses, prefixes and networks', () => {
    expect(w.matchAddress('192.0.2.1')).toBe('192.0.2.1');
    expect(w.matchAddress('192.0.2.2')).toBeUndefined();
    expect(w.matchAddress('198.51.100.9')).toBe('198.51.100');
    expect(w.matchAddress('10.1.200.3')).toBe('10.1');
    expect(w.matchAddress('172.31.0.5')).toBe('172'); // one octet, as Postgrey reads it
    expect(w.matchAddress('173.0.0.1')).toBeUndefined();
    expect(w.matchAddress('203.0.113.15')).toBe('203.0.113.0/28');
    expect(w.matchAddress('203.0.113.16')).toBeUndefined();
    expect(w.matchAddress('2001:db8:5::1')).toBe('2001:db8::/32');
  });
  it('ships a default list of pool senders that parses', () => {
    const d = compileClientWhitelist(parseLines(fs.readFileSync(defaultWhitelistFile(), 'utf8')));
    expect(d.matchName('mail-yw1-f170.google.com')).toBe('google.com');
    expect(d.matchName('o1.ptr1234.sendgrid.net')).toBe('sendgrid.net');
    expect(d.matchName('mail-db8eur05on2101.outbound.protection.outlook.com')).toBeDefined();
  });
});

describe('recipient whitelist (postgrey_whitelist_recipients syntax)', () => {
  const w = compileRecipientWhitelist(['lists.test', 'postmaster@', 'abuse@example.test', '/^noc-.*@/']);
  it('matches domain, name@, name@domain (with +ext) and regexp', () => {
    expect(w.match('a@lists.test')).toBe('lists.test');
    expect(w.match('a@sub.lists.test')).toBe('lists.test');
    expect(w.match('a@xlists.test')).toBeUndefined();
    expect(w.match('postmaster+x@anything.test')).toBe('postmaster@');
    expect(w.match('abuse+spam@example.test')).toBe('abuse@example.test');
    expect(w.match('abuse@other.test')).toBeUndefined();
    expect(w.match('noc-1@example.test')).toBe('/^noc-.*@/');
  });
});

describe('known recipients', () => {
  it('knows addresses, +extensions, @domain catch-alls and postmaster; off when empty', () => {
    const r = compileRecipients(['bob@example.test', '@catch.test'], true);
    expect(r.unknown('bob@example.test', 'example.test')).toBe(false);
    expect(r.unknown('Bob+x@EXAMPLE.test', 'example.test')).toBe(false);
    expect(r.unknown('alice@example.test', 'example.test')).toBe(true);
    expect(r.unknown('anyone@catch.test', 'catch.test')).toBe(false);
    expect(r.unknown('postmaster@example.test', 'example.test')).toBe(false);
    expect(compileRecipients([], false).unknown('alice@example.test', 'example.test')).toBe(false);
  });

  it('reads a quoted local part and a source route as relay protection and delivery do', () => {
    const r = compileRecipients(['bob@example.test'], true);
    expect(r.unknown('"bob"@example.test', 'example.test')).toBe(false);
    expect(r.unknown('"bob+x"@example.test', 'example.test')).toBe(false);
    expect(r.unknown('@hop.test:bob@example.test', 'example.test')).toBe(false);
    expect(r.unknown('"alice"@example.test', 'example.test')).toBe(true);
  });
});

describe('watched files', () => {
  it('reloads a file when it changes', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moat-wl-'));
    const file = path.join(dir, 'clients');
    fs.writeFileSync(file, '# none yet\n');
    const list = new WatchedList('t', ['a.test'], [file], compileClientWhitelist, undefined, 50);
    try {
      expect(list.current.matchName('b.test')).toBeUndefined();
      fs.writeFileSync(file, 'b.test # added\n');
      const until = Date.now() + 3000;
      while (!list.current.matchName('x.b.test') && Date.now() < until)
        await new Promise((r) => setTimeout(r, 20));
      expect(list.current.matchName('x.b.test')).toBe('b.test');
      expect(list.current.matchName('a.test')).toBe('a.test');
    } finally {
      list.close();
    }
  });
});
