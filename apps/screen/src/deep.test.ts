import { describe, expect, it } from 'vitest';
import { DeepWatcher } from './deep.js';
import type { DeepTest } from './replies.js';

const ALL: DeepTest[] = ['pipelining', 'non_smtp_command', 'bare_newline'];
const watcher = (tests: DeepTest[] = ALL) =>
  new DeepWatcher({ tests: new Set(tests), forbidden: new Set(['CONNECT', 'GET', 'POST']) });
const b = (s: string) => Buffer.from(s, 'latin1');

describe('DeepWatcher', () => {
  it('a well-behaved client passes every test at its first RCPT, then watching stops', () => {
    const w = watcher();
    w.server(b('220 mx ESMTP\r\n'));
    expect(w.client(b('EHLO c.test\r\n')).violations).toEqual([]);
    w.server(b('250-mx\r\n250-PIPELINING\r\n250 8BITMIME\r\n'));
    // MAIL, RCPT, DATA may sit in one group after the EHLO reply
    const r = w.client(b('MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n'));
    expect(r.violations).toEqual([]);
    expect(r.passed.sort()).toEqual([...ALL].sort());
    expect(r.done).toBe(true);
    expect(w.client(b('GET / HTTP/1.0\n')).violations).toEqual([]);
  });

  it('pipelining: a command before the reply to EHLO (or before the banner) fails', () => {
    const w = watcher(['pipelining']);
    w.server(b('220 mx ESMTP\r\n'));
    const r = w.client(b('EHLO c.test\r\nMAIL FROM:<a@b>\r\n'));
    expect(r.violations.map((v) => [v.test, v.after, v.text.toString()])).toEqual([
      ['pipelining', 'EHLO', 'MAIL FROM:<a@b>\r\n'],
    ]);
    expect(w.owedLines()).toEqual(['EHLO c.test', 'MAIL FROM:<a@b>']);
    const early = watcher(['pipelining']);
    expect(early.client(b('EHLO x\r\n')).violations[0]).toMatchObject({
      test: 'pipelining',
      after: 'CONNECT',
    });
  });

  it('pipelining across chunks: the reply counting follows multi-line replies split anywhere', () => {
    const w = watcher(['pipelining']);
    w.server(b('22'));
    w.server(b('0 mx\r\n'));
    w.client(b('EHLO x\r\n'));
    w.server(b('250-mx\r\n25'));
    expect(w.client(b('MAIL FROM:<>\r\n')).violations).toHaveLength(1);
    const ok = watcher(['pipelining']);
    ok.server(b('220 mx\r\n'));
    ok.client(b('EHLO x\r\n'));
    ok.server(b('250-mx\r\n25'));
    ok.server(b('0 PIPELINING\r\n'));
    expect(ok.client(b('MAIL FROM:<>\r\n')).violations).toEqual([]);
    expect(ok.helo).toBe('x');
  });

  it('non-SMTP: forbidden commands, header-like lines and lines not starting with a letter', () => {
    for (const line of ['GET / HTTP/1.1', 'post /x', 'CONNECT a:25', 'Host: example.test', '\x16\x03\x01']) {
      const w = watcher(['non_smtp_command']);
      w.server(b('220 mx\r\n'));
      expect(w.client(b(line + '\r\n')).violations.map((v) => v.test)).toEqual(['non_smtp_command']);
    }
    const w = watcher(['non_smtp_command']);
    w.server(b('220 mx\r\n'));
    expect(w.client(b('MAIL FROM:<a@b>\r\n')).violations).toEqual([]);
  });

  it('bare newline: LF without CR fails, also when the line was split across chunks', () => {
    const w = watcher(['bare_newline']);
    w.server(b('220 mx\r\n'));
    expect(w.client(b('EHLO x\r\n')).violations).toEqual([]);
    w.server(b('250 mx\r\n'));
    expect(w.client(b('NOOP')).violations).toEqual([]);
    const r = w.client(b('\n'));
    expect(r.violations[0]).toMatchObject({ test: 'bare_newline', after: 'EHLO' });
  });
});
