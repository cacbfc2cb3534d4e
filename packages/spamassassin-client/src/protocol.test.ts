/**
 * Unit tests of the bytes: request heads, the response parser on captured spamd 4.0.1 responses
 * (whole, split at every byte, errors, bad lines), the Spam:/DidSet: values, addresses and the size
 * policy. No sockets.
 */
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { formatSpamdAddress, parseSpamdAddress } from './address.js';
import { prepareBody } from './body.js';
import { exitCodeName, SpamdError } from './errors.js';
import {
  buildRequestHead,
  parseSpamHeader,
  parseSymbols,
  parseTellTargets,
  ResponseParser,
  type SpamdCommand,
  type SpamdResponse,
} from './protocol.js';

/** Responses captured from spamd 4.0.1 for the GTUBE message (SYMBOLS, REPORT...) and errors. */
const CAPTURED = {
  PONG: 'SPAMD/1.5 0 PONG\r\n',
  CHECK: 'SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1000.0 / 5.0\r\n\r\n',
  CHECK_HAM: 'SPAMD/1.1 0 EX_OK\r\nSpam: False ; -0.0 / 5.0\r\n\r\n',
  SYMBOLS:
    'SPAMD/1.1 0 EX_OK\r\nContent-length: 39\r\nSpam: True ; 1000.0 / 5.0\r\n\r\nGTUBE,MSGID_SHORT,NO_RECEIVED,NO_RELAYS',
  REPORT_IFSPAM_HAM: 'SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\nSpam: No ; -0.0 / 5.0\r\n\r\n',
  TELL: 'SPAMD/1.1 0 EX_OK\r\n\r\n\r\n',
  TELL_DID: 'SPAMD/1.1 0 EX_OK\r\nDidSet: local,remote\r\nDidRemove: local\r\n\r\n\r\n',
  TELL_OFF:
    'SPAMD/1.0 69 Service Unavailable: TELL commands are not enabled, set the --allow-tell switch.\r\n',
  BAD_HEADER: "SPAMD/1.0 76 Bad header line: (header not in 'Name: value' format)\r\n",
  MISMATCH: 'SPAMD/1.0 76 Bad header line: (Content-Length mismatch: Expected 50 bytes, got 5 bytes)\r\n',
};

function parse(command: SpamdCommand, ...chunks: (string | Buffer)[]): SpamdResponse | undefined {
  const p = new ResponseParser({ command, address: '127.0.0.1:783' });
  for (const c of chunks) {
    const r = p.push(typeof c === 'string' ? Buffer.from(c, 'latin1') : c);
    if (r) return r;
  }
  return undefined;
}

function parseEnded(command: SpamdCommand, text: string): SpamdResponse {
  const p = new ResponseParser({ command, address: '127.0.0.1:783' });
  p.push(Buffer.from(text, 'latin1'));
  return p.end();
}

function thrown(fn: () => unknown): SpamdError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(SpamdError);
    return err as SpamdError;
  }
  throw new Error('did not throw');
}

describe('buildRequestHead', () => {
  it('writes the request line, Content-length and User, then a blank line; never Compress', () => {
    const head = buildRequestHead({ command: 'CHECK', contentLength: 208, user: 'alice' }).toString('latin1');
    expect(head).toBe('CHECK SPAMC/1.5\r\nContent-length: 208\r\nUser: alice\r\n\r\n');
    expect(head).not.toMatch(/compress/i);
  });

  it('sends PING as spamc -K does: no Content-length, no User', () => {
    expect(buildRequestHead({ command: 'PING' }).toString()).toBe('PING SPAMC/1.5\r\n\r\n');
  });

  it('writes the TELL headers', () => {
    const head = buildRequestHead({
      command: 'TELL',
      contentLength: 5,
      messageClass: 'spam',
      set: ['local', 'remote'],
      remove: [],
    }).toString();
    expect(head).toBe(
      'TELL SPAMC/1.5\r\nContent-length: 5\r\nMessage-class: spam\r\nSet: local,remote\r\n\r\n',
    );
  });

  it('refuses a User: value that would break the request', () => {
    for (const user of ['a\r\nCompress: zlib', 'tab\there', '', ' padded']) {
      const err = thrown(() => buildRequestHead({ command: 'CHECK', contentLength: 1, user }));
      expect(err.kind).toBe('input');
    }
    expect(thrown(() => buildRequestHead({ command: 'CHECK', contentLength: -1 })).kind).toBe('input');
  });
});

describe('ResponseParser', () => {
  it('reads PONG from its status line alone', () => {
    expect(parse('PING', CAPTURED.PONG)).toMatchObject({
      version: '1.5',
      code: 0,
      message: 'PONG',
      headers: {},
    });
  });

  it('reads CHECK: status, headers (names lower-cased), no body', () => {
    const r = parse('CHECK', CAPTURED.CHECK)!;
    expect(r).toMatchObject({ version: '1.1', code: 0, codeName: 'EX_OK', message: 'EX_OK' });
    expect(r.headers).toEqual({ spam: 'True ; 1000.0 / 5.0' });
    expect(r.body.length).toBe(0);
  });

  it('gives the same response for every way of splitting the bytes', () => {
    const bytes = Buffer.from(CAPTURED.SYMBOLS, 'latin1');
    const whole = parse('SYMBOLS', bytes)!;
    expect(whole.body.toString()).toBe('GTUBE,MSGID_SHORT,NO_RECEIVED,NO_RELAYS');
    for (let i = 1; i < bytes.length; i++) {
      expect(parse('SYMBOLS', bytes.subarray(0, i), bytes.subarray(i))).toEqual(whole);
    }
    const oneByOne = [...bytes].map((b) => Buffer.from([b]));
    expect(parse('SYMBOLS', ...oneByOne)).toEqual(whole);
  });

  it('waits for the whole Content-length and ignores bytes after it', () => {
    const p = new ResponseParser({ command: 'PROCESS' });
    expect(
      p.push(Buffer.from('SPAMD/1.1 0 EX_OK\r\nContent-length: 10\r\nSpam: False ; 0.0 / 5.0\r\n\r\n01234')),
    ).toBe(undefined);
    expect(p.complete).toBe(false);
    const r = p.push(Buffer.from('56789trailing'))!;
    expect(r.body.toString()).toBe('0123456789');
    expect(p.complete).toBe(true);
    expect(p.end()).toBe(r);
  });

  it('keeps body bytes exactly (8-bit, CRLF)', () => {
    const body = Buffer.from([0x53, 0xe9, 0x0d, 0x0a, 0x00, 0xff]);
    const head = Buffer.from(
      `SPAMD/1.1 0 EX_OK\r\nContent-length: ${body.length}\r\nSpam: False ; 0.0 / 5.0\r\n\r\n`,
    );
    expect(parse('PROCESS', head, body)!.body).toEqual(body);
  });

  it('completes REPORT_IFSPAM of a ham message at Content-length: 0', () => {
    const r = parse('REPORT_IFSPAM', CAPTURED.REPORT_IFSPAM_HAM)!;
    expect(r.body.length).toBe(0);
    expect(parseSpamHeader(r.headers['spam']!)).toEqual({ isSpam: false, score: 0, threshold: 5 });
  });

  it('reads TELL (no Content-length, an extra CRLF after the blank line) and its DidSet/DidRemove', () => {
    expect(parse('TELL', CAPTURED.TELL)!.headers).toEqual({});
    const r = parse('TELL', CAPTURED.TELL_DID)!;
    expect(parseTellTargets(r.headers['didset'])).toEqual(['local', 'remote']);
    expect(parseTellTargets(r.headers['didremove'])).toEqual(['local']);
  });

  it('reads a body without Content-length up to the end of the stream (old spamd)', () => {
    const p = new ResponseParser({ command: 'REPORT' });
    expect(p.push(Buffer.from('SPAMD/1.1 0 EX_OK\r\nSpam: True ; 6.0 / 5.0\r\n\r\nreport '))).toBe(undefined);
    expect(p.push(Buffer.from('text'))).toBe(undefined);
    expect(p.end().body.toString()).toBe('report text');
  });

  it('returns error responses with their code, name and text', () => {
    for (const [text, code, name] of [
      [CAPTURED.TELL_OFF, 69, 'EX_UNAVAILABLE'],
      [CAPTURED.BAD_HEADER, 76, 'EX_PROTOCOL'],
      [CAPTURED.MISMATCH, 76, 'EX_PROTOCOL'],
      ['SPAMD/1.0 64 EX_USAGE\r\n', 64, 'EX_USAGE'],
      ['SPAMD/1.0 65 EX_DATAERR\r\n', 65, 'EX_DATAERR'],
      ['SPAMD/1.0 67 EX_NOUSER\r\n', 67, 'EX_NOUSER'],
      ['SPAMD/1.0 70 EX_SOFTWARE\r\n', 70, 'EX_SOFTWARE'],
      ['SPAMD/1.0 75 EX_TEMPFAIL\r\n', 75, 'EX_TEMPFAIL'],
      ['SPAMD/1.0 77 EX_NOPERM\r\n', 77, 'EX_NOPERM'],
      ['SPAMD/1.0 78 EX_CONFIG\r\n', 78, 'EX_CONFIG'],
      ['SPAMD/1.0 79 Timeout: (30 second timeout while trying to CHECK)\r\n', 79, 'EX_TIMEOUT'],
      ['SPAMD/1.0 99\r\n', 99, 'EX_99'],
    ] as const) {
      const r = parse('CHECK', text)!;
      expect(r).toMatchObject({ code, codeName: name });
    }
    expect(parse('TELL', CAPTURED.TELL_OFF)!.message).toBe(
      'Service Unavailable: TELL commands are not enabled, set the --allow-tell switch.',
    );
    expect(exitCodeName(69)).toBe('EX_UNAVAILABLE');
  });

  it('calls a bad status line, header line or Content-length a protocol error', () => {
    for (const [command, text] of [
      ['CHECK', 'HTTP/1.1 400 Bad Request\r\n'],
      ['CHECK', 'SPAMD/1.1 zero EX_OK\r\n'],
      ['CHECK', 'SPAMD/1.1 0 EX_OK\r\nno colon here\r\n\r\n'],
      ['SYMBOLS', 'SPAMD/1.1 0 EX_OK\r\nContent-length: 12x\r\n\r\n'],
      ['CHECK', 'x'.repeat(70_000)],
    ] as const) {
      const err = thrown(() => parse(command, text));
      expect(err.kind).toBe('protocol');
      expect(err.address).toBe('127.0.0.1:783');
    }
  });

  it('refuses a body over maxResponseBytes', () => {
    const p = new ResponseParser({ command: 'PROCESS', maxResponseBytes: 100 });
    const err = thrown(() => p.push(Buffer.from('SPAMD/1.1 0 EX_OK\r\nContent-length: 101\r\n\r\n')));
    expect(err.kind).toBe('protocol');
  });

  it('calls a stream that ends early "closed", saying where', () => {
    expect(thrown(() => parseEnded('CHECK', '')).message).toMatch(/before any response/);
    expect(thrown(() => parseEnded('CHECK', 'SPAMD/1.1 0 EX')).message).toMatch(/status line/);
    expect(thrown(() => parseEnded('CHECK', 'SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1000.0 / 5.0\r\n')).kind).toBe(
      'closed',
    );
    const err = thrown(() => parseEnded('PROCESS', 'SPAMD/1.1 0 EX_OK\r\nContent-length: 748\r\n\r\nX-Spam'));
    expect(err.kind).toBe('closed');
    expect(err.message).toMatch(/after 6 of 748 body bytes/);
  });
});

describe('values', () => {
  it('parses Spam: in both spellings and negative scores', () => {
    expect(parseSpamHeader('True ; 1000.0 / 5.0')).toEqual({ isSpam: true, score: 1000, threshold: 5 });
    expect(parseSpamHeader('Yes ; 7.4 / 5.0')).toEqual({ isSpam: true, score: 7.4, threshold: 5 });
    expect(parseSpamHeader('False ; -1.9 / 5.0')).toEqual({ isSpam: false, score: -1.9, threshold: 5 });
    expect(parseSpamHeader('No;0/10')).toEqual({ isSpam: false, score: 0, threshold: 10 });
    expect(Object.is(parseSpamHeader('False ; -0.0 / 5.0')!.score, 0)).toBe(true);
    for (const bad of ['', 'True', 'Maybe ; 1 / 5', 'True ; x / 5.0', 'True ; 1.0']) {
      expect(parseSpamHeader(bad)).toBe(undefined);
    }
  });

  it('splits SYMBOLS and ignores empty or unknown TELL targets', () => {
    expect(parseSymbols('GTUBE,MSGID_SHORT\r\n')).toEqual(['GTUBE', 'MSGID_SHORT']);
    expect(parseSymbols('')).toEqual([]);
    expect(parseTellTargets(undefined)).toEqual([]);
    expect(parseTellTargets('Local, bogus')).toEqual(['local']);
  });
});

describe('addresses', () => {
  it('parses TCP and unix socket addresses and formats them back', () => {
    expect(parseSpamdAddress('127.0.0.1:7830')).toEqual({ host: '127.0.0.1', port: 7830 });
    expect(parseSpamdAddress('spamd')).toEqual({ host: 'spamd', port: 783 });
    expect(parseSpamdAddress('[::1]:7830')).toEqual({ host: '::1', port: 7830 });
    expect(parseSpamdAddress('/run/spamd.sock')).toEqual({ socketPath: '/run/spamd.sock' });
    expect(parseSpamdAddress('unix:/run/spamd.sock')).toEqual({ socketPath: '/run/spamd.sock' });
    expect(formatSpamdAddress({ host: '::1', port: 783 })).toBe('[::1]:783');
    expect(formatSpamdAddress({ socketPath: '/s' })).toBe('unix:/s');
  });

  it('refuses addresses it cannot use', () => {
    for (const bad of ['', 'host:0', 'host:99999', 'host:abc', '::1:783', ':783', 'unix:']) {
      expect(thrown(() => parseSpamdAddress(bad)).kind).toBe('input');
    }
  });
});

describe('prepareBody (maxSize)', () => {
  const ctx = { command: 'CHECK' as const, address: 'a:1' };
  const msg = Buffer.from('0123456789');

  it('passes messages up to maxSize', () => {
    expect(prepareBody(msg, { maxSize: 10 }, ctx)).toMatchObject({ length: 10, truncated: false });
  });

  it('refuses a larger message with kind too-large, or truncates it when asked', () => {
    const err = thrown(() => prepareBody(msg, { maxSize: 9 }, ctx));
    expect(err).toMatchObject({ kind: 'too-large', phase: 'prepare' });
    expect(err.message).toMatch(/10 bytes is larger than maxSize 9/);
    const t = prepareBody(msg, { maxSize: 4, truncate: true }, ctx);
    expect(t).toMatchObject({ length: 4, originalLength: 10, truncated: true });
    expect(t.buffer!.toString()).toBe('0123');
  });

  it('never truncates PROCESS (its result is the message)', () => {
    const err = thrown(() =>
      prepareBody(msg, { maxSize: 4, truncate: true }, { ...ctx, command: 'PROCESS' }),
    );
    expect(err.kind).toBe('too-large');
  });

  it('checks the declared length of a stream', () => {
    expect(thrown(() => prepareBody({ stream: Readable.from([]), length: -1 }, {}, ctx)).kind).toBe('input');
    expect(
      thrown(() => prepareBody({ stream: Readable.from([msg]), length: 11 }, { maxSize: 10 }, ctx)).kind,
    ).toBe('too-large');
  });
});
