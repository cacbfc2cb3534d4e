import { describe, expect, it } from 'vitest';
import { Engine } from './engine.js';

const base = { hostname: 'mx.example.test', who: '[192.0.2.1]:4000', commandCountLimit: 20 };
const REJECT = '550 5.7.1 Service unavailable; client [192.0.2.1] blocked using zen.test';

describe('Engine (the enforce action)', () => {
  it('answers EHLO and MAIL, rejects every RCPT with the test reply and logs NOQUEUE', () => {
    const e = new Engine({ ...base, rcptReply: REJECT });
    const ehlo = e.command('EHLO client.test');
    expect(ehlo.replies).toEqual([
      '250-mx.example.test',
      '250-SIZE',
      '250-ENHANCEDSTATUSCODES',
      '250-8BITMIME',
      '250 SMTPUTF8',
    ]);
    expect(e.command('RCPT TO:<a@b>').replies).toEqual(['503 5.5.1 Error: need MAIL command']);
    expect(e.command('MAIL FROM:<s@r.test>').replies).toEqual(['250 2.1.0 Ok']);
    expect(e.command('MAIL FROM:<s@r.test>').replies).toEqual(['503 5.5.1 Error: nested MAIL command']);
    const rcpt = e.command('RCPT TO:<bob@example.test>');
    expect(rcpt.replies).toEqual([REJECT]);
    expect(rcpt.logs[0]!.msg).toBe(
      `NOQUEUE: reject: RCPT from [192.0.2.1]:4000: ${REJECT}; from=<s@r.test>, to=<bob@example.test>, proto=ESMTP, helo=<client.test>`,
    );
    expect(e.command('DATA').replies).toEqual(['554 5.5.1 Error: no valid recipients']);
    expect(e.command('VRFY x').replies).toEqual(['502 5.5.1 VRFY command is disabled']);
    expect(e.command('STARTTLS').replies).toEqual(['502 5.5.2 Error: command not recognized']);
    expect(e.command('RSET').replies).toEqual(['250 2.0.0 Ok']);
    expect(e.command('DATA').replies).toEqual(['503 5.5.1 Error: need MAIL command']);
    expect(e.command('EHLO').replies).toEqual(['501 5.5.2 Syntax: EHLO hostname']);
    const quit = e.command('QUIT');
    expect(quit).toMatchObject({ replies: ['221 2.0.0 Bye'], close: true });
  });

  it('HELO gives proto=SMTP; a taken-over session keeps the envelope it had', () => {
    const e = new Engine({
      ...base,
      rcptReply: '550 5.5.1 Protocol error',
      helo: 'h.test',
      from: 'f@x',
      proto: 'ESMTP',
    });
    expect(e.command('RCPT TO:<t@y>').logs[0]!.msg).toMatch(
      /from=<f@x>, to=<t@y>, proto=ESMTP, helo=<h\.test>$/,
    );
    const h = new Engine({ ...base, rcptReply: '550 5.5.1 Protocol error' });
    expect(h.command('HELO old.test').replies).toEqual(['250 mx.example.test']);
    h.command('MAIL FROM:<>');
    expect(h.command('RCPT TO:<t@y>').logs[0]!.msg).toMatch(
      /from=<>, to=<t@y>, proto=SMTP, helo=<old\.test>$/,
    );
  });

  it('closes after commandCountLimit commands with 421 4.7.0 and logs COMMAND COUNT LIMIT', () => {
    const e = new Engine({ ...base, commandCountLimit: 3, rcptReply: REJECT });
    for (let i = 0; i < 3; i++) expect(e.command('NOOP').close).toBe(false);
    const r = e.command('NOOP');
    expect(r.replies).toEqual(['421 4.7.0 mx.example.test Error: too many commands']);
    expect(r.close).toBe(true);
    expect(r.logs[0]!.msg).toBe('COMMAND COUNT LIMIT from [192.0.2.1]:4000 after NOOP');
  });
});
