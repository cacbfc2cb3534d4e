/**
 * screen hands a client it has passed to greylist, as postscreen passes clients to smtpd: the
 * connection itself moves (@moat/handover), so greylist talks to the client directly and screen is out
 * of the path. Real processes, real sockets; every client comes from its own 127.0.9.x address.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  Chain,
  headerValues,
  maildirMessages,
  SmtpClient,
  smtpSource,
  swaks,
  waitFor,
  type LogLine,
} from '@moat/testkit';

let chain: Chain;

beforeAll(async () => {
  chain = await Chain.create({
    config: {
      screen: { accessList: [], greetWait: '1s', greetAction: 'ignore', clientConnectionCountLimit: 2 },
    },
  });
}, 60_000);

afterAll(async () => {
  await chain?.stop();
});

const connect = (ip: string) => SmtpClient.connect(chain.ports.screen, { localAddress: ip });
const logOf = (service: 'screen' | 'greylist', re: RegExp) =>
  chain.service(service).waitForLog((l: LogLine) => re.test(l.msg), 5000, String(re));

describe('handover from screen to greylist', () => {
  it('a passed client talks to greylist on its own connection: its session survives screen being killed', async () => {
    const c = await connect('127.0.9.1');
    // the teaser from screen, then (after the greet wait, PASS NEW, handover) greylist's banner
    const greeting = await c.read(5000);
    expect(greeting.lines[0]).toBe('220-mx.example.test ESMTP');
    expect(greeting.text).toMatch(/^220 mx\.example\.test ESMTP/);
    await logOf('screen', /^PASS NEW \[127\.0\.9\.1\]:\d+$/);
    expect((await c.cmd('EHLO survivor.remote.test')).code).toBe(250);

    // a spliced session would die with screen; a handed-over one has nothing left in screen
    await chain.service('screen').stop('SIGKILL');
    try {
      const r = await c.send(
        'alice@remote.test',
        ['handover@example.test'],
        'Subject: handed over\r\n\r\nscreen is gone.',
      );
      expect(r.mail.text).toBe('250 2.1.0 Accepted');
      expect(r.rcpt.map((x) => x.text)).toEqual(['250 2.1.5 Accepted']);
      expect(r.final?.text).toMatch(/^250 2\.0\.0 Ok: queued as \w+$/);
      expect((await c.cmd('QUIT')).text).toBe('221 2.0.0 Bye');

      const [msg] = await chain.waitForMail('handover@example.test');
      const received = headerValues(msg!.text, 'Received');
      expect(received[2]).toMatch(
        /^from survivor\.remote\.test \(unknown \[127\.0\.9\.1\]\) by mx\.example\.test \(moat-greylist\) with ESMTP id /,
      );
    } finally {
      await chain.start('screen');
    }
  });

  it('bytes a client sent before the banner go along: greylist answers them after its banner', async () => {
    const c = await connect('127.0.9.4');
    c.write('EHLO early.remote.test\r\n');
    const greeting = await c.read(5000);
    expect(greeting.lines[0]).toBe('220-mx.example.test ESMTP');
    expect(greeting.text).toMatch(/^220 mx\.example\.test ESMTP/);
    const ehlo = await c.read();
    expect(ehlo.code).toBe(250);
    expect(ehlo.lines[0]).toBe('250-mx.example.test Nice to meet you, [127.0.9.4]');
    await logOf(
      'screen',
      /^PREGREET 24 after [\d.]+ from \[127\.0\.9\.4\]:\d+: EHLO early\.remote\.test\\r\\n$/,
    );
    const r = await c.send(
      'alice@remote.test',
      ['early@example.test'],
      'Subject: early\r\n\r\ntalked too soon.',
    );
    expect(r.final?.text).toMatch(/^250 2\.0\.0 Ok: queued as \w+$/);
    await c.quit();
    const [msg] = await chain.waitForMail('early@example.test');
    expect(headerValues(msg!.text, 'Received')[2]).toMatch(
      /^from early\.remote\.test \(unknown \[127\.0\.9\.4\]\) by mx\.example\.test \(moat-greylist\)/,
    );
  });

  it('greylist keeps the per-client connection limit that screen no longer counts: the third gets 421 4.7.0', async () => {
    const first = await connect('127.0.9.3');
    expect((await first.read(5000)).text).toMatch(/^220 mx\.example\.test ESMTP/); // PASS NEW, handed over
    const second = await connect('127.0.9.3');
    expect((await second.read()).text).toMatch(/^220 mx\.example\.test ESMTP/); // PASS OLD, handed over
    const third = await connect('127.0.9.3');
    expect((await third.read()).text).toBe('421 4.7.0 Error: too many connections');
    await logOf('greylist', /^NOQUEUE: reject: CONNECT from \[127\.0\.9\.3\]:\d+: too many connections$/);
    // one leaves, the next one is let in again
    await first.quit();
    await new Promise((r) => setTimeout(r, 200));
    const fourth = await connect('127.0.9.3');
    expect((await fourth.read()).text).toMatch(/^220 mx\.example\.test ESMTP/);
    await Promise.all([second.quit(), fourth.quit(), third.quit()]);
  });

  it("without greylist's socket, screen splices (saying why once) and the mail still arrives", async () => {
    // as in a container without the shared folder: a screen that never finds greylist's socket
    // (a screen already connected to it keeps that connection while greylist lives)
    fs.rmSync(path.join(chain.dataDir, 'run', 'greylist.sock'));
    await chain.service('screen').stop();
    await chain.start('screen');
    const r = await swaks([
      '--server',
      `127.0.0.1:${chain.ports.screen}`,
      '--local-interface',
      '127.0.9.2',
      '--from',
      'alice@remote.test',
      '--to',
      'spliced@example.test',
    ]);
    expect(r.exitCode, r.output).toBe(0);
    expect(r.replies.some((l) => /^250 2\.0\.0 Ok: queued as /.test(l))).toBe(true);
    const warning = await logOf('screen', /^handover to greylist failed; splicing/);
    expect(warning.code).toBe('ENOENT');
    // spliced, so screen saw the session end
    await logOf('screen', /^DISCONNECT \[127\.0\.9\.2\]:\d+$/);
    await chain.waitForMail('spliced@example.test');
  });
});

describe('handover under a burst', () => {
  let burst: Chain;

  beforeAll(async () => {
    // spamd (about 40 messages a second) is not what this measures: messages skip it by size
    burst = await Chain.create({ config: { filter: { spamd: 'off' } } });
  }, 60_000);

  afterAll(async () => {
    await burst?.stop();
  });

  it('50 clients arriving at once are all handed over, none spliced for want of room in the queue', async () => {
    // a datagram socket lets only net.unix.max_dgram_qlen (often 10) wait: at 50 at once, about one
    // client in ten was refused with EAGAIN and spliced (see packages/handover/native/handover.c)
    const r = await smtpSource([
      '-s',
      '50',
      '-m',
      '500',
      '-l',
      '1024',
      '-f',
      'burst@remote.test',
      '-t',
      'burst@example.test',
      `127.0.0.1:${burst.ports.screen}`,
    ]);
    expect(r.status, r.output).toBe(0);
    await waitFor(
      () => maildirMessages(burst.maildir, 'burst@example.test').length === 500 || undefined,
      20_000,
      '500 messages',
    );
    const screen = burst.service('screen');
    expect(screen.logs.filter((l) => /^ALLOWLISTED /.test(l.msg))).toHaveLength(500);
    expect(screen.logs.filter((l) => /^handover to greylist failed|^DISCONNECT /.test(l.msg))).toEqual([]);
  });
});
