/**
 * Failure semantics of the hops, each at the stage where the client can be told: a next hop that is down, refuses,
 * or is slower than its timeout gives the client a 4xx (never a 5xx, never a 250); a 5xx from
 * downstream reaches the client unchanged and the downstream transaction is aborted without its final
 * dot; a client that disconnects mid-DATA leaves nothing queued; internal ports refuse strangers.
 *
 * The next hop is scripted (ScriptedServer) where it must misbehave on cue; where the real one can
 * fail for real (stopped, unreachable) the real processes are used.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  Chain,
  filesUnder,
  freePort,
  maildirMessages,
  message,
  ScriptedServer,
  SmtpClient,
  waitFor,
} from '@moat/testkit';

const FROM = 'alice@remote.test';
const TO = 'bob@example.test';

async function session(port: number, localAddress?: string): Promise<SmtpClient> {
  const c = await SmtpClient.connect(port, localAddress ? { localAddress } : {});
  const banner = await c.read();
  expect(banner.code).toBe(220);
  const ehlo = await c.cmd('EHLO client.remote.test');
  expect(ehlo.code).toBe(250);
  return c;
}

describe('greylist in front of a misbehaving filter', () => {
  let next: ScriptedServer;
  let chain: Chain;
  beforeAll(async () => {
    next = await ScriptedServer.start();
    chain = await Chain.create({
      services: ['greylist', 'screen'],
      config: {
        greylist: {
          next: [`127.0.0.1:${next.port}`],
          nextTimeout: '1s',
          messageSizeLimit: '20k',
          recipientLimit: 2,
        },
      },
    });
  }, 60_000);
  afterAll(async () => {
    await chain?.stop();
    await next?.close();
  });
  afterEach(() => {
    next.script = {};
  });

  // greylist answers MAIL and RCPT itself and sends filter the envelope at DATA, pipelined: filter's
  // refusals come back as the final reply
  it("gives filter's refusal of MAIL as the final reply, and never sends the body", async () => {
    next.script = { replies: { mail: '550 5.7.1 Sender refused by policy' } };
    const before = next.messages.length;
    const c = await session(chain.ports.screen);
    const r = await c.send(FROM, [TO], message());
    expect(r.mail.text).toBe('250 2.1.0 Accepted');
    expect(r.data?.code).toBe(354);
    expect(r.final?.text).toBe('550 5.7.1 Sender refused by policy');
    expect(next.messages.length).toBe(before);
    await c.quit();
  });

  it("gives filter's refusal of every recipient as the final reply; of some but not all, 451 4.3.0", async () => {
    next.script = { replies: { rcpt: '550 5.1.1 <nobody@example.test>: User unknown' } };
    const before = next.messages.length;
    let c = await session(chain.ports.screen);
    let r = await c.send(FROM, ['nobody@example.test'], message());
    expect(r.rcpt.map((x) => x.text)).toEqual(['250 2.1.5 Accepted']);
    expect(r.final?.text).toBe('550 5.1.1 <nobody@example.test>: User unknown');
    await c.quit();
    let rcpts = 0;
    next.script = {
      get replies() {
        return { rcpt: rcpts++ % 2 === 0 ? '250 2.1.5 Ok' : '450 4.2.1 Try later' };
      },
    } as never;
    c = await session(chain.ports.screen);
    r = await c.send(FROM, ['a@example.test', 'b@example.test'], message());
    expect(r.final?.text).toBe('451 4.3.0 Error: next hop refused some recipients, try again later');
    expect(next.messages.length).toBe(before);
    await c.quit();
  });

  it('sends filter nothing for a transaction that ends before DATA, and uses the same connection next', async () => {
    next.script = {};
    const sessionsBefore = next.sessions.length;
    const commandsBefore = next.commands.length;
    const c = await session(chain.ports.screen);
    expect((await c.cmd(`MAIL FROM:<${FROM}>`)).code).toBe(250);
    expect((await c.cmd(`RCPT TO:<${TO}>`)).code).toBe(250);
    expect((await c.cmd('RSET')).code).toBe(250);
    expect(next.commands.slice(commandsBefore).filter((l) => /^(MAIL|RCPT|DATA|RSET)/i.test(l))).toEqual([]);
    const r = await c.send(FROM, [TO], message());
    expect(r.final?.code).toBe(250);
    await c.quit();
    expect(next.commands.slice(commandsBefore).filter((l) => /^MAIL/i.test(l))).toHaveLength(1);
    expect(next.sessions.length - sessionsBefore).toBeLessThanOrEqual(1);
  });

  it('refuses relaying on the real domain, whatever the address tricks', async () => {
    const c = await session(chain.ports.screen);
    await c.cmd(`MAIL FROM:<${FROM}>`);
    expect((await c.cmd('RCPT TO:<victim@elsewhere.test>')).text).toBe(
      '554 5.7.1 <victim@elsewhere.test>: Relay access denied',
    );
    expect((await c.cmd('RCPT TO:<victim%elsewhere.test@example.test>')).text).toBe(
      '554 5.7.1 <victim%elsewhere.test@example.test>: Relay access denied',
    );
    expect((await c.cmd('RCPT TO:<elsewhere.test!victim@example.test>')).code).toBe(554);
    expect((await c.cmd('RCPT TO:<@example.test:victim@elsewhere.test>')).text).toBe(
      '554 5.7.1 <victim@elsewhere.test>: Relay access denied',
    );
    expect((await c.cmd('RCPT TO:<@elsewhere.test:bob@example.test>')).text).toBe('250 2.1.5 Accepted');
    await c.quit();
  });

  it('answers 452 4.5.3 past the recipient limit', async () => {
    const c = await session(chain.ports.screen);
    await c.cmd(`MAIL FROM:<${FROM}>`);
    expect((await c.cmd('RCPT TO:<a@example.test>')).code).toBe(250);
    expect((await c.cmd('RCPT TO:<b@example.test>')).code).toBe(250);
    expect((await c.cmd('RCPT TO:<c@example.test>')).text).toBe('452 4.5.3 Error: too many recipients');
    await c.quit();
  });

  it('relays a refused DATA command as the final reply and never sends the body', async () => {
    next.script = { replies: { data: '554 5.3.0 No DATA today' } };
    const before = next.messages.length;
    const c = await session(chain.ports.screen);
    const r = await c.send(FROM, [TO], message());
    expect(r.data?.code).toBe(354);
    expect(r.final?.text).toBe('554 5.3.0 No DATA today');
    expect(next.messages.length).toBe(before);
    await c.quit();
  });

  it('relays a final 5xx unchanged', async () => {
    next.script = { replies: { final: '554 5.7.0 Reject, id=X - INFECTED: Eicar' } };
    const c = await session(chain.ports.screen);
    const r = await c.send(FROM, [TO], message());
    expect(r.final?.text).toBe('554 5.7.0 Reject, id=X - INFECTED: Eicar');
    await c.quit();
  });

  it('gives 451 4.4.2 when filter is slower than its timeout, with the envelope and at the final dot', async () => {
    next.script = { delays: { mail: 2500 } };
    let c = await session(chain.ports.screen);
    const slow = await c.send(FROM, [TO], message());
    expect(slow.final?.text).toBe('451 4.4.2 Error: timeout waiting for next hop, try again later');
    await c.quit();
    next.script = { delays: { final: 2500 } };
    c = await session(chain.ports.screen);
    const r = await c.send(FROM, [TO], message());
    expect(r.final?.text).toBe('451 4.4.2 Error: timeout waiting for next hop, try again later');
    await c.quit();
  });

  it('stops a message over the size limit with 552 5.3.4 and aborts the filter transaction without the final dot', async () => {
    const before = next.sessions.length;
    const c = await session(chain.ports.screen);
    const r = await c.send(
      FROM,
      [TO],
      message({ body: 'x'.repeat(76) + '\r\n'.repeat(1) + ('y'.repeat(998) + '\r\n').repeat(100) }),
    );
    expect(r.final?.text).toBe('552 5.3.4 Message size exceeds fixed limit');
    await waitFor(
      () => next.sessions.slice(before).some((s) => s.abortedInData) || undefined,
      3000,
      'the downstream abort',
    );
    expect(next.sessions.slice(before).flatMap((s) => s.messages)).toHaveLength(0);
    await c.quit();
  });

  it('logs a message over the size limit once, with its envelope and the 552, and no error', async () => {
    const logs = chain.service('greylist').logs;
    const before = logs.length;
    const c = await session(chain.ports.screen);
    const r = await c.send(FROM, [TO], message({ body: ('y'.repeat(998) + '\r\n').repeat(30) }));
    expect(r.final?.text).toBe('552 5.3.4 Message size exceeds fixed limit');
    await c.quit();
    const line = await chain
      .service('greylist')
      .waitForLog((l) => logs.indexOf(l) >= before && l.msg === 'not accepted', 3000, 'the line');
    expect(line).toMatchObject({
      level: 'info',
      client: '127.0.0.1',
      from: FROM,
      to: [TO],
      reply: '552 5.3.4 Message size exceeds fixed limit',
    });
    await new Promise((res) => setTimeout(res, 200));
    const after = logs.slice(before);
    expect(after.filter((l) => l.level === 'error' || l.level === 'fatal')).toEqual([]);
    expect(after.filter((l) => l.id === line.id)).toHaveLength(1);
  });

  it('refuses XFORWARD from the outside', async () => {
    const c = await session(chain.ports.screen);
    expect((await c.cmd('XFORWARD ADDR=192.0.2.1')).text).toBe('550 5.7.0 Error: Not allowed');
    await c.quit();
  });
});

describe('greylist when filter is down', () => {
  it('answers 451 4.4.1 at MAIL when nothing listens at the next hop', async () => {
    const closed = await freePort();
    const chain = await Chain.create({
      services: ['greylist', 'screen'],
      config: { greylist: { next: [`127.0.0.1:${closed}`] } },
    });
    try {
      const c = await session(chain.ports.screen);
      expect((await c.cmd(`MAIL FROM:<${FROM}>`)).text).toBe(
        '451 4.4.1 Error: next hop unavailable, try again later',
      );
      await c.quit();
      // the line says whose MAIL was refused and what it was told, not only that filter is down
      const line = await chain.service('greylist').waitForLog((l) => l.msg === 'filter failed', 3000);
      expect(line).toMatchObject({
        level: 'warn',
        client: '127.0.0.1',
        from: FROM,
        stage: 'MAIL',
        reply: '451 4.4.1 Error: next hop unavailable, try again later',
      });
    } finally {
      await chain.stop();
    }
  }, 30_000);
});

describe('filter in front of a misbehaving delivery', () => {
  let next: ScriptedServer;
  let chain: Chain;
  beforeAll(async () => {
    next = await ScriptedServer.start();
    chain = await Chain.create({
      services: ['filter'],
      config: { filter: { next: [`127.0.0.1:${next.port}`], nextTimeout: '1s' } },
    });
  }, 60_000);
  afterAll(async () => {
    await chain?.stop();
    await next?.close();
  });

  it('passes XFORWARD on and relays the final reply', async () => {
    next.script = {};
    const c = await session(chain.ports.filter);
    expect(
      (
        await c.cmd(
          'XFORWARD NAME=mail.remote.test ADDR=192.0.2.7 PORT=4567 PROTO=ESMTP HELO=mail.remote.test',
        )
      ).text,
    ).toBe('250 2.0.0 OK');
    const r = await c.send(FROM, [TO], message());
    expect(r.final?.text).toBe('250 2.0.0 Ok: queued as SCRIPTED');
    const xf = next.commands.filter((l) => l.startsWith('XFORWARD'));
    // IDENT is this hop's queue id, so the next hop's log points back to ours
    expect(xf[xf.length - 1]).toMatch(
      /^XFORWARD NAME=mail\.remote\.test ADDR=192\.0\.2\.7 PORT=4567 PROTO=ESMTP HELO=mail\.remote\.test IDENT=\w{12}$/,
    );
    await c.quit();
  });

  it('answers 451 4.3.0 when delivery refuses some recipients but not all, and aborts', async () => {
    next.script = { replies: {} };
    const c = await session(chain.ports.filter);
    const before = next.messages.length;
    // the scripted server refuses every RCPT after the script changes; switch it between commands
    await c.cmd(`MAIL FROM:<${FROM}>`);
    await c.cmd('RCPT TO:<a@example.test>');
    await c.cmd('RCPT TO:<b@example.test>');
    await c.cmd('DATA');
    let rcpts = 0;
    next.script = {
      get replies() {
        return { rcpt: rcpts++ % 2 === 0 ? '250 2.1.5 Ok' : '450 4.2.1 Try later' };
      },
    } as never;
    c.write(message() + '.\r\n');
    expect((await c.read()).text).toBe('451 4.3.0 Error: next hop refused some recipients, try again later');
    expect(next.messages.length).toBe(before);
    await c.quit();
  });
});

describe('the real chain', () => {
  let chain: Chain;
  beforeAll(async () => {
    chain = await Chain.create({
      config: {
        greylist: { peers: ['127.0.0.1/32'] },
        filter: { peers: ['127.0.0.1/32'] },
        delivery: { peers: ['127.0.0.1/32'] },
        quarantine: { peers: ['127.0.0.1/32'] },
      },
    });
  }, 60_000);
  afterAll(async () => {
    await chain?.stop();
  });

  it('refuses connections to the internal ports from outside their peers with 421 4.7.0', async () => {
    for (const port of [
      chain.ports.greylist,
      chain.ports.filter,
      chain.ports.delivery,
      chain.ports.quarantine,
    ]) {
      const c = await SmtpClient.connect(port, { localAddress: '127.0.0.2' });
      expect((await c.read()).text).toBe(
        '421 4.7.0 Error: access denied for [127.0.0.2]: not an allowed peer',
      );
      await waitFor(() => c.closed || undefined, 2000, 'the connection to close');
    }
    // the public port takes anyone
    const ok = await session(chain.ports.screen, '127.0.0.2');
    await ok.quit();
  });

  it('leaves nothing queued when the client disconnects in the middle of DATA', async () => {
    const c = await session(chain.ports.screen);
    await c.cmd(`MAIL FROM:<${FROM}>`);
    await c.cmd('RCPT TO:<halfway@example.test>');
    expect((await c.cmd('DATA')).code).toBe(354);
    c.write(message({ body: 'first half\r\n'.repeat(1000) }));
    await new Promise((r) => setTimeout(r, 300));
    c.destroy();
    await chain
      .service('greylist')
      .waitForLog((l) => l.msg === 'message not received in full; filter transaction aborted', 5000);
    // the same at filter, when the previous hop leaves in the middle of the body
    const f = await session(chain.ports.filter);
    await f.cmd(`MAIL FROM:<${FROM}>`);
    await f.cmd('RCPT TO:<halfway@example.test>');
    expect((await f.cmd('DATA')).code).toBe(354);
    f.write(message({ body: 'first half\r\n'.repeat(1000) }));
    await new Promise((r) => setTimeout(r, 300));
    f.destroy();
    await chain
      .service('filter')
      .waitForLog((l) => l.msg === 'message not received in full; nothing forwarded', 5000);
    await new Promise((r) => setTimeout(r, 500));
    // an aborted message is an outcome, logged once per hop: not also an error with a stack trace
    for (const s of ['greylist', 'filter'] as const)
      expect(chain.service(s).logs.filter((l) => l.level === 'error')).toEqual([]);
    expect(maildirMessages(chain.maildir, 'halfway@example.test')).toHaveLength(0);
    expect(filesUnder(path.join(chain.dataDir, 'queue'))).toEqual([]);
    expect(filesUnder(path.join(chain.dataDir, 'filter'))).toEqual([]);
  });

  it('answers 451 4.4.1 when filter is stopped, and delivers again once it is back', async () => {
    await chain.service('filter').stop();
    const c = await session(chain.ports.screen);
    expect((await c.cmd(`MAIL FROM:<${FROM}>`)).text).toBe(
      '451 4.4.1 Error: next hop unavailable, try again later',
    );
    await c.quit();
    await chain.start('filter');
    const again = await session(chain.ports.screen);
    const r = await again.send(FROM, ['back@example.test'], message());
    expect(r.final?.text).toMatch(/^250 2\.0\.0 Ok: queued as \w+$/);
    await again.quit();
    await chain.waitForMail('back@example.test');
  });

  it('reads exactly one message out of one DATA, whatever bare LFs and CRs it holds (no SMTP smuggling)', async () => {
    const c = await session(chain.ports.screen);
    await c.cmd(`MAIL FROM:<${FROM}>`);
    await c.cmd('RCPT TO:<smuggle@example.test>');
    expect((await c.cmd('DATA')).code).toBe(354);
    const smuggled =
      'MAIL FROM:<evil@remote.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nboo\r\n';
    c.write(`Subject: carrier\r\n\r\nline one\n.\n${smuggled}.\r${smuggled}.\r\n`);
    const final = await c.read();
    expect(final.text).toMatch(/^250 2\.0\.0 Ok: queued as /);
    expect((await c.cmd('RSET')).code).toBe(250);
    await c.quit();
    const [msg] = await chain.waitForMail('smuggle@example.test');
    expect(maildirMessages(chain.maildir, 'victim@example.test')).toHaveLength(0);
    // the bare line endings became CRLF inside the one message
    expect(msg!.text).toContain('line one\r\n.\r\nMAIL FROM:<evil@remote.test>\r\n');
    expect(msg!.text).not.toMatch(/[^\r]\n/);
    expect(msg!.text).not.toMatch(/\r(?!\n)/);
  });

  it('offers STARTTLS and carries the message over it', async () => {
    const c = await session(chain.ports.screen);
    expect((await c.cmd('STARTTLS')).text).toBe('220 2.0.0 Ready to start TLS');
    await c.startTls();
    const ehlo = await c.cmd('EHLO client.remote.test');
    expect(ehlo.lines.join('\n')).not.toContain('STARTTLS');
    const r = await c.send(FROM, ['tls@example.test'], message());
    expect(r.final?.code).toBe(250);
    await c.quit();
    const [msg] = await chain.waitForMail('tls@example.test');
    expect(msg!.text).toMatch(/\(moat-greylist\) with ESMTPS id/);
    expect(fs.existsSync(path.join(chain.dataDir, 'tls', 'selfsigned.crt'))).toBe(true);
  });
});
