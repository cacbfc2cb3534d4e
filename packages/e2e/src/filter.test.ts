/**
 * filter (amavisd-new's role) through the whole chain with the real clamd (EICAR signature) and spamd,
 * swaks as the client on the screen port: viruses (plain, base64 attachment, inside a zip) and GTUBE are
 * rejected in the sender's session with amavis' replies and quarantined first; ham arrives with the
 * X-Spam-* and X-Virus-Scanned header fields; a policy bank between tag2 and kill tags the subject; a
 * bypass recipient gets GTUBE tagged; `.pdf.exe` in a zip is banned; malformed MIME never crashes it.
 * The EICAR string is built from hex at run time (@moat/daemons' eicar()).
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { eicar } from '@moat/daemons';
import {
  Chain,
  filesUnder,
  headerValues,
  maildirMessages,
  message,
  SmtpClient,
  swaks,
  tmpDir,
  waitFor,
  zip,
} from '@moat/testkit';

const GTUBE = 'XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X';

let chain: Chain;
let files: string;

beforeAll(async () => {
  files = tmpDir('moat-filter-files-');
  chain = await Chain.create({
    config: {
      domains: ['example.test', 'tagged.example.test'],
      filter: {
        // always add the X-Spam-* fields (amavis' -999 idiom), so ham shows X-Spam-Flag: NO
        tagLevel: -999,
        policyBanks: { 'tagged.example.test': { tag2Level: -999, killLevel: 1000 } },
        bypass: ['lover@example.test'],
      },
    },
  });
}, 60_000);

afterAll(async () => {
  await chain?.stop();
});

function send(to: string, extra: string[]) {
  return swaks([
    '--server',
    `127.0.0.1:${chain.ports.screen}`,
    '--ehlo',
    'client.remote.test',
    '--from',
    'alice@remote.test',
    '--to',
    to,
    ...extra,
  ]);
}

/** The reply to the final dot (swaks prints it as the last reply before QUIT's 221). */
function finalReply(replies: string[]): string {
  const bye = replies.lastIndexOf('221 2.0.0 Bye');
  return replies[(bye >= 0 ? bye : replies.length) - 1] ?? '';
}

function quarantined(): Array<{ head: Record<string, unknown>; text: string }> {
  return filesUnder(path.join(chain.dataDir, 'quarantine')).map((f) => {
    const raw = fs.readFileSync(f, 'latin1');
    const nl = raw.indexOf('\n');
    return { head: JSON.parse(raw.slice(0, nl)) as Record<string, unknown>, text: raw.slice(nl + 1) };
  });
}

async function expectRejectedAndQuarantined(
  to: string,
  extra: string[],
  reason: RegExp,
): Promise<{ id: string; quarantine: { head: Record<string, unknown>; text: string } }> {
  const r = await send(to, extra);
  const final = finalReply(r.replies);
  const m = /^554 5\.7\.0 Reject, id=(\w+) - (.*)$/.exec(final);
  expect(m, r.output).not.toBeNull();
  expect(m![2]).toMatch(reason);
  const id = m![1]!;
  const q = await waitFor(
    () => quarantined().find((x) => x.text.includes(`id=${id}`)),
    5000,
    'the quarantined copy',
  );
  expect(q.head.rcpt).toEqual([to]);
  expect(q.head.from).toBe('alice@remote.test');
  expect(maildirMessages(chain.maildir, to)).toHaveLength(0);
  // the filter's line for the message says where it went: quarantined, although the client got a 554
  const line = await chain.processes.get('filter')!.waitForLog((l) => l.id === id && 'quarantined' in l);
  expect(line).toMatchObject({ quarantined: [to], delivered: [] });
  // and under which id quarantine keeps it (amavis' "quarantine: ..."), so the copy is found from here
  expect(line.quarantineId).toBe(q.head.id);
  return { id, quarantine: q };
}

describe('viruses, rejected in the session and quarantined', () => {
  it('EICAR as a plain body: 554 5.7.0 Reject, id=<id> - INFECTED: <name>', async () => {
    const { id, quarantine } = await expectRejectedAndQuarantined(
      'v1@example.test',
      ['--header', 'Subject: plain eicar', '--body', eicar()],
      /^INFECTED: Eicar-Test-Signature\.UNOFFICIAL$/,
    );
    expect(headerValues(quarantine.text, 'X-Moat-Verdict')[0]).toBe(
      `INFECTED reject+quarantine, id=${id}, reason=INFECTED: Eicar-Test-Signature.UNOFFICIAL`,
    );
    expect(quarantine.text).toContain(eicar());
    const line = await chain.service('filter').waitForLog((l) => l.id === id);
    expect(line).toMatchObject({ msg: 'rejected', category: 'INFECTED', client: '127.0.0.1' });
    // the Message-ID the sender quotes finds the verdict (amavis logs it too)
    expect(line.messageId).toBe(headerValues(quarantine.text, 'Message-Id')[0]);
    expect(line.messageId).toMatch(/^<.+@.+>$/);
    expect((line.checks as Record<string, { outcome: string }>).virus!.outcome).toBe('fail');
  });

  it('EICAR as a base64 attachment', async () => {
    const file = path.join(files, 'report.txt');
    fs.writeFileSync(file, eicar());
    await expectRejectedAndQuarantined(
      'v2@example.test',
      ['--header', 'Subject: attached eicar', '--attach', `@${file}`],
      /^INFECTED: Eicar/i,
    );
  });

  it('EICAR inside a zip attachment', async () => {
    const file = path.join(files, 'docs.zip');
    fs.writeFileSync(file, zip([{ name: 'readme.txt', data: Buffer.from(eicar(), 'latin1') }]));
    await expectRejectedAndQuarantined(
      'v3@example.test',
      ['--header', 'Subject: zipped eicar', '--attach-type', 'application/zip', '--attach', `@${file}`],
      /^INFECTED: Eicar/i,
    );
  });
});

describe('spam, banned files, ham', () => {
  it('GTUBE: 554 5.7.0 Reject, id=<id> - SPAM, quarantined with its score', async () => {
    const { quarantine } = await expectRejectedAndQuarantined(
      's1@example.test',
      ['--header', 'Subject: gtube', '--body', `This is spam.\n${GTUBE}\n`],
      /^SPAM$/,
    );
    expect(headerValues(quarantine.text, 'X-Spam-Status')[0]).toMatch(
      /^Yes, score=\d{3,4}(\.\d+)? tagged_above=-999 required=6\.2\s+tests=\[.*GTUBE=1000/,
    );
  });

  it('GTUBE padded past filter.spamMaxSize: still scored (its first 512k, as amavis truncates), rejected', async () => {
    const padding = `${'padding line to push the message past spamMaxSize '.repeat(20)}\n`.repeat(600); // 600 KB
    const body = path.join(files, 'padded.txt');
    fs.writeFileSync(body, `This is spam.\n${GTUBE}\n${padding}`);
    const { quarantine } = await expectRejectedAndQuarantined(
      's2@example.test',
      ['--header', 'Subject: padded gtube', '--body', `@${body}`],
      /^SPAM$/,
    );
    expect(headerValues(quarantine.text, 'X-Moat-Results')[0]).toMatch(
      /spam=fail \(score=\d+(\.\d+)? required=[\d.]+ \(first 524288 of \d+ bytes\)/,
    );
  });

  it('`.pdf.exe` inside a zip: 554 5.7.0 Reject, id=<id> - BANNED: docs.zip/invoice.pdf.exe', async () => {
    const file = path.join(files, 'docs.zip');
    fs.writeFileSync(file, zip([{ name: 'invoice.pdf.exe', data: Buffer.from('not really a program') }]));
    await expectRejectedAndQuarantined(
      'b1@example.test',
      ['--header', 'Subject: banned', '--attach-type', 'application/zip', '--attach', `@${file}`],
      /^BANNED: docs\.zip\/invoice\.pdf\.exe$/,
    );
  });

  it('ham arrives with X-Spam-Flag: NO, X-Virus-Scanned and X-Moat-Results; outside X-Spam-* removed', async () => {
    const r = await send('ham@example.test', [
      '--header',
      'Subject: lunch',
      '--header',
      'X-Spam-Flag: YES',
      '--header',
      'X-Spam-Status: Yes, score=99 (forged outside)',
      '--body',
      'Shall we have lunch on Thursday at noon? The usual place.',
    ]);
    expect(finalReply(r.replies), r.output).toMatch(/^250 2\.0\.0 Ok: queued as \w+$/);
    const [msg] = await chain.waitForMail('ham@example.test');
    const text = msg!.text;
    expect(headerValues(text, 'X-Spam-Flag')).toEqual(['NO']);
    expect(headerValues(text, 'X-Virus-Scanned')).toEqual(['ClamAV using moat at mx.example.test']);
    expect(headerValues(text, 'X-Spam-Score')[0]).toMatch(/^-?\d+(\.\d{1,3})?$/);
    expect(headerValues(text, 'X-Spam-Status')).toHaveLength(1);
    expect(headerValues(text, 'X-Spam-Status')[0]).toMatch(
      /^No, score=-?[\d.]+ tagged_above=-999 required=6\.2\s+tests=\[[A-Z0-9_=., -]*\]$/,
    );
    expect(headerValues(text, 'X-Moat-Results')[0]).toMatch(/^virus=pass \(clean, \d+ ms\); spam=pass/);
    expect(headerValues(text, 'Subject')).toEqual(['lunch']);
  });

  it('between tag2 and kill (policy bank tagged.example.test: tag2 -999, kill 1000): delivered with the subject tag', async () => {
    const r = await send('ann@tagged.example.test', ['--header', 'Subject: offer', '--body', 'Cheap offer.']);
    expect(finalReply(r.replies), r.output).toMatch(/^250 2\.0\.0 Ok: queued as /);
    const [msg] = await chain.waitForMail('ann@tagged.example.test');
    expect(headerValues(msg!.text, 'Subject')).toEqual(['***Spam*** offer']);
    expect(headerValues(msg!.text, 'X-Spam-Flag')).toEqual(['YES']);
    expect(headerValues(msg!.text, 'X-Spam-Status')[0]).toMatch(/^Yes, score=.* required=-999/);
    expect(headerValues(msg!.text, 'X-Spam-Report')).toHaveLength(1);
  });

  it('a bypass recipient receives GTUBE, tagged', async () => {
    const r = await send('lover@example.test', ['--header', 'Subject: gtube', '--body', GTUBE]);
    expect(finalReply(r.replies), r.output).toMatch(/^250 2\.0\.0 Ok: queued as /);
    const [msg] = await chain.waitForMail('lover@example.test');
    expect(headerValues(msg!.text, 'Subject')).toEqual(['***Spam*** gtube']);
    expect(headerValues(msg!.text, 'X-Spam-Flag')).toEqual(['YES']);
  });
});

describe('malformed MIME (mailparser-style fixtures)', () => {
  const fixtures: Record<string, string> = {
    'multipart without boundary':
      'From: a@remote.test\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\nContent-Type: multipart/mixed\r\n\r\n--x\r\n\r\nhi\r\n',
    'unterminated boundary':
      'From: a@remote.test\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: application/octet-stream; name="a.zip"\r\nContent-Transfer-Encoding: base64\r\n\r\nUEsDBAoAAAAAA\r\n',
    'broken base64 and bad encoding':
      'From: a@remote.test\r\nContent-Type: application/zip; name=x.zip\r\nContent-Transfer-Encoding: x-uuencode-ish\r\n\r\n!!!!====@@@@\r\n',
    'deep nesting': (() => {
      let s = 'From: a@remote.test\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n';
      for (let i = 0; i < 200; i++) s += `Content-Type: multipart/mixed; boundary="b${i}"\r\n\r\n--b${i}\r\n`;
      return s + 'Content-Type: text/plain\r\n\r\ndeep\r\n';
    })(),
    'header garbage, NUL and 8-bit':
      'From: a@remote.test\r\nthis is not a header\r\nSubject: caf\u00e9 \u0000\r\nContent-Type: text/plain; charset="\r\n\r\nbody\r\n',
    'a zip that is not a zip':
      'From: a@remote.test\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\nContent-Type: multipart/mixed; boundary=z\r\n\r\n--z\r\nContent-Type: application/zip; name=a.zip\r\nContent-Transfer-Encoding: base64\r\n\r\n' +
      Buffer.concat([Buffer.from('PK\x03\x04'), Buffer.alloc(600, 0xff)]).toString('base64') +
      '\r\n--z--\r\n',
  };
  // clamd gives up on 200 nested levels (Heuristics.Limits.Exceeded): a limit is never clean
  const expected: Record<string, RegExp> = {
    'deep nesting': /^451 4\.3\.0 Try again later, id=\w+ - UNCHECKED: virus scanner limit exceeded$/,
  };
  for (const [name, raw] of Object.entries(fixtures)) {
    it(`${name}: answered, never a crash`, async () => {
      const c = await SmtpClient.connect(chain.ports.filter);
      expect((await c.read()).code).toBe(220);
      await c.cmd('EHLO client.remote.test');
      const r = await c.send('a@remote.test', ['mime@example.test'], raw);
      expect(r.final?.text).toMatch(expected[name] ?? /^250 /);
      await c.quit();
      expect(chain.service('filter').exited).toBeUndefined();
    });
  }
  it('the filter is still up afterwards', async () => {
    const c = await SmtpClient.connect(chain.ports.filter);
    expect((await c.read()).code).toBe(220);
    await c.cmd('EHLO client.remote.test');
    const r = await c.send('a@remote.test', ['after@example.test'], message());
    expect(r.final?.text).toMatch(/^250 /);
    await c.quit();
  });
});
