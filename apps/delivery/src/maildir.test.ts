import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { mailboxPath } from './maildir.js';

describe('mailboxPath', () => {
  it('keeps path-unsafe local parts inside their domain folder', () => {
    expect(mailboxPath('/m', 'a/../../b@example.test').dir).toBe(
      path.join('/m', 'example.test', 'a%2f..%2f..%2fb'),
    );
    expect(mailboxPath('/m', '..@example.test').local).toBe('%2e.');
  });

  it('gives different recipients different folders, also outside Latin-1', () => {
    // U+0E91 was "%e91", the folder of "é1" ("%e9" + "1"): one Maildir for two recipients
    const locals = ['é1', '\u0e91', '(8', '\u0288', 'jos\u00e9', '\ud83d\ude00'];
    const dirs = locals.map((l) => mailboxPath('/m', `${l}@example.test`).dir);
    expect(new Set(dirs).size).toBe(locals.length);
    expect(mailboxPath('/m', 'jos\u00e9@example.test').local).toBe('jos%e9');
    expect(mailboxPath('/m', '\u0e91@example.test').local).toBe('%u0e91');
  });

  it("files user+extension in user's Maildir, as greylist's recipient table accepts it for user", () => {
    expect(mailboxPath('/m', 'Bob+News@example.test').dir).toBe(path.join('/m', 'example.test', 'bob'));
    expect(mailboxPath('/m', '"bob+x"@example.test').local).toBe('bob');
    // a local part that starts with the delimiter has no user part to fold to
    expect(mailboxPath('/m', '+x@example.test').local).toBe('+x');
  });
});
