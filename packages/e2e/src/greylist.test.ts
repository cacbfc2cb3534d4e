/**
 * Greylisting end to end: swaks through screen into the MX smtpd from different 127.x addresses, with
 * a 2 s delay; the same scenarios on the policy port; the store down. SPF records come from a tiny
 * UDP DNS server started here (greylist-support.ts), which also answers NXDOMAIN to reverse lookups.
 */
import { spawnSync } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openStore } from '@moat/reputation';
import {
  Chain,
  freePort,
  headerValues,
  maildirMessages,
  repoRoot,
  swaks,
  waitFor,
  type LogLine,
} from '@moat/testkit';
import { PolicyClient, policyRequest, startTinyDns, type TinyDns } from './greylist-support.js';

const DELAY_MS = 2000;
const HELP = 'Greylisted, see http://postgrey.schweikert.ch/help/example.test.html';
const KNOWN = ['bob', 'carol', 'dave', 'erin', 'frank', 'gina', 'hank', 'ida', 'jo'].map(
  (n) => `${n}@example.test`,
);

let chain: Chain;
let dns: TinyDns;
let policyPort: number;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

beforeAll(async () => {
  dns = await startTinyDns({ 'pool.test': ['v=spf1 ip4:127.0.1.0/24 ip4:127.0.2.0/24 -all'] });
  policyPort = await freePort();
  chain = await Chain.create({
    config: {
      dns: { servers: [dns.server], timeout: '2s' },
      // our own network is never greylisted: keep it to 127.0.0.1 so the 127.0.x.y clients are strangers
      mynetworks: ['127.0.0.1/32'],
      screen: { accessList: ['permit 127.0.0.0/8'] },
      recipients: KNOWN,
      greylist: { enabled: true, delay: '2s', policyListen: `127.0.0.1:${policyPort}` },
    },
  });
}, 60_000);

afterAll(async () => {
  await chain?.stop();
  await dns?.close();
});

function send(from: string, sender: string, rcpts: string[], extra: string[] = []) {
  return swaks([
    '--server',
    `127.0.0.1:${chain.ports.screen}`,
    '--local-interface',
    from,
    '--ehlo',
    'client.remote.test',
    '--from',
    sender,
    '--to',
    rcpts.join(','),
    '--header',
    `Subject: greylist ${sender}`,
    ...extra,
  ]);
}

const greylistLog = (pred: (l: LogLine) => boolean, what: string) =>
  chain.service('greylist').waitForLog(pred, 5000, what);

describe('greylisting in the MX smtpd (RCPT, Postgrey rules)', () => {
  it('defers a new triplet with the exact 451, defers an early retry, and delivers at the delay with one X-Greylist', async () => {
    const first = await send('127.0.0.11', 'alice@remote.test', ['bob@example.test']);
    expect(first.replies, first.output).toContain(
      `451 4.7.1 <bob@example.test>: Recipient address rejected: ${HELP}`,
    );
    await greylistLog(
      (l) =>
        l.msg.startsWith(
          'action=greylist, reason=new, client_name=unknown, client_address=127.0.0.11, sender=alice@remote.test, recipient=bob@example.test',
        ),
      'reason=new',
    );
    const early = await send('127.0.0.11', 'alice@remote.test', ['bob@example.test']);
    expect(early.replies).toContain(`451 4.7.1 <bob@example.test>: Recipient address rejected: ${HELP}`);
    await greylistLog(
      (l) =>
        /^action=greylist, reason=early-retry \(\d+s missing\), .*client_address=127\.0\.0\.11/.test(l.msg),
      'early-retry',
    );
    await sleep(DELAY_MS + 100);
    const retry = await send('127.0.0.11', 'alice@remote.test', ['bob@example.test']);
    expect(retry.exitCode, retry.output).toBe(0);
    await greylistLog(
      (l) => /^action=pass, reason=triplet found, delay=[23], .*client_address=127\.0\.0\.11/.test(l.msg),
      'pass',
    );
    const [msg] = await chain.waitForMail('bob@example.test');
    const xg = headerValues(msg!.text, 'X-Greylist');
    expect(xg).toHaveLength(1);
    expect(xg[0]).toMatch(
      /^delayed [23] seconds by moat-greylist at mx\.example\.test; \w{3}, \d+ \w{3} \d{4} [\d:]{8} \+0000$/,
    );
    // later messages of the same triplet pass without the header
    const again = await send('127.0.0.11', 'alice@remote.test', ['bob@example.test']);
    expect(again.exitCode).toBe(0);
    await waitFor(
      () => maildirMessages(chain.maildir, 'bob@example.test').length === 2 || undefined,
      5000,
      'second delivery',
    );
    const second = maildirMessages(chain.maildir, 'bob@example.test').find((m) => m.text !== msg!.text)!;
    expect(headerValues(second.text, 'X-Greylist')).toEqual([]);
  });

  it('lets the retry from another address of the same /24 pass', async () => {
    const first = await send('127.0.0.21', 'news+1234@remote.test', ['carol@example.test']);
    expect(first.replies).toContain(`451 4.7.1 <carol@example.test>: Recipient address rejected: ${HELP}`);
    await sleep(DELAY_MS + 100);
    // another address of 127.0.0.0/24, and the sender's +extension changed: the same triplet
    const retry = await send('127.0.0.22', 'news+5678@remote.test', ['carol@example.test']);
    expect(retry.exitCode, retry.output).toBe(0);
  });

  it('keys on the SPF domain: a pool retrying from another network passes', async () => {
    const first = await send('127.0.1.5', 'mailer@pool.test', ['dave@example.test']);
    expect(first.replies).toContain(`451 4.7.1 <dave@example.test>: Recipient address rejected: ${HELP}`);
    await greylistLog(
      (l) => l.msg.startsWith('action=greylist, reason=new') && l.keyedOn === 'spf:pool.test',
      'spf keyed',
    );
    await sleep(DELAY_MS + 100);
    const retry = await send('127.0.2.9', 'mailer@pool.test', ['dave@example.test']);
    expect(retry.exitCode, retry.output).toBe(0);
    // a sender without SPF from another network is a new triplet
    const other = await send('127.0.2.9', 'someone@remote.test', ['dave@example.test']);
    expect(other.replies).toContain(`451 4.7.1 <dave@example.test>: Recipient address rejected: ${HELP}`);
  });

  it('rejects relaying and unknown users with 5xx before greylisting, and decides per recipient', async () => {
    const r = await send('127.0.0.31', 'x@remote.test', [
      'nobody@example.test',
      'erin@example.test',
      'someone@elsewhere.test',
    ]);
    expect(r.replies).toContain(
      '550 5.1.1 <nobody@example.test>: Recipient address rejected: User unknown in local recipient table',
    );
    expect(r.replies).toContain(`451 4.7.1 <erin@example.test>: Recipient address rejected: ${HELP}`);
    expect(r.replies).toContain('554 5.7.1 <someone@elsewhere.test>: Relay access denied');
    expect(
      chain.service('greylist').find((l) => l.msg.includes('recipient=nobody@example.test')),
    ).toBeUndefined();
  });

  it('ends a session of relay probing after 20 refusals with 421 4.7.0 (smtpd_hard_error_limit)', async () => {
    const probes = Array.from({ length: 25 }, (_, i) => `victim${i}@elsewhere${i}.test`);
    const r = await send('127.0.0.32', 'x@remote.test', probes);
    const denied = r.replies.filter((l) => / Relay access denied$/.test(l));
    expect(denied).toHaveLength(20);
    expect(r.replies).toContain('421 4.7.0 mx.example.test Error: too many errors');
  });

  it('whitelists a client after five first passes (client AWL), per exact address', async () => {
    // four earlier first passes, an hour apart, as the store would hold them
    const store = await openStore('sqlite', { dataDir: chain.dataDir });
    const now = Date.now();
    for (let i = 4; i >= 1; i--) await store.awlBump('127.0.0.41', now - i * 3_700_000);
    await store.close();
    await send('127.0.0.41', 'fifth@remote.test', ['frank@example.test']);
    await sleep(DELAY_MS + 100);
    expect((await send('127.0.0.41', 'fifth@remote.test', ['frank@example.test'])).exitCode).toBe(0);
    await greylistLog((l) => l.msg === 'whitelisted: unknown[127.0.0.41]', 'whitelisted');
    const fresh = await send('127.0.0.41', 'brand-new@remote.test', ['frank@example.test']);
    expect(fresh.exitCode, fresh.output).toBe(0);
    await greylistLog(
      (l) =>
        l.msg.startsWith('action=pass, reason=client AWL, client_name=unknown, client_address=127.0.0.41'),
      'client AWL',
    );
    const neighbour = await send('127.0.0.42', 'brand-new@remote.test', ['gina@example.test']);
    expect(neighbour.replies).toContain(`451 4.7.1 <gina@example.test>: Recipient address rejected: ${HELP}`);
  });
});

describe('the same engine on the policy port', () => {
  it('answers DEFER_IF_PERMIT, then PREPEND X-Greylist once, then DUNNO, on one kept-open connection', async () => {
    const p = await PolicyClient.connect(policyPort);
    try {
      const req = (ip: string, extra: Record<string, string> = {}) =>
        policyRequest(ip, 'pol@remote.test', 'hank@example.test', extra);
      expect(await p.ask(req('127.0.3.1'))).toBe(`DEFER_IF_PERMIT ${HELP}`);
      expect(await p.ask(req('127.0.3.1', { etrn_domain: '' }))).toBe(`DEFER_IF_PERMIT 4.2.0 ${HELP}`);
      await sleep(DELAY_MS + 100);
      // another address of the /24, unknown attributes ignored
      const pass = await p.ask(req('127.0.3.2', { instance: 'msg1', some_future_attribute: 'x' }));
      expect(pass).toMatch(
        /^PREPEND X-Greylist: delayed [23] seconds by moat-greylist at mx\.example\.test; /,
      );
      expect(await p.ask(req('127.0.3.2', { instance: 'msg2' }))).toBe('DUNNO');
      // missing attributes, other states: DUNNO
      const { recipient: _r, ...noRcpt } = req('127.0.3.3');
      expect(await p.ask(noRcpt)).toBe('DUNNO');
      expect(await p.ask(req('127.0.3.3', { protocol_state: 'DATA' }))).toBe('DUNNO');
      // SPF keying through the policy port
      expect(await p.ask(policyRequest('127.0.1.77', 'bulk@pool.test', 'ida@example.test'))).toBe(
        `DEFER_IF_PERMIT ${HELP}`,
      );
      await sleep(DELAY_MS + 100);
      expect(await p.ask(policyRequest('127.0.2.77', 'bulk@pool.test', 'ida@example.test'))).toMatch(
        /^PREPEND X-Greylist: /,
      );
    } finally {
      p.close();
    }
  });

  it('closes without an answer on a request that is not smtpd_access_policy', async () => {
    const s = net.connect(policyPort, '127.0.0.1');
    let got = '';
    s.on('data', (d) => (got += d.toString()));
    const closed = new Promise<void>((r) => s.on('close', () => r()));
    s.write('request=junk\n\n');
    await closed;
    expect(got).toBe('');
  });
});

describe('the store down', () => {
  let down: Chain;
  let downPolicy: number;
  beforeAll(async () => {
    downPolicy = await freePort();
    down = await Chain.create({
      services: ['delivery', 'quarantine', 'filter', 'greylist'],
      config: {
        mynetworks: ['127.0.0.1/32'],
        store: `redis://127.0.0.1:${await freePort()}`,
        dns: { servers: [dns.server], timeout: '1s' },
        greylist: {
          enabled: true,
          delay: '2s',
          proxyPeers: ['192.0.2.254/32'],
          storeTimeout: '300ms',
          policyListen: `127.0.0.1:${downPolicy}`,
        },
      },
    });
  }, 60_000);
  afterAll(async () => {
    await down?.stop();
  });

  it('gives 451 4.3.0 at RCPT and on the policy port, never a pass and never a 5xx', async () => {
    const r = await swaks([
      '--server',
      `127.0.0.1:${down.ports.greylist}`,
      '--local-interface',
      '127.0.0.51',
      '--from',
      'a@remote.test',
      '--to',
      'jo@example.test',
    ]);
    expect(r.replies, r.output).toContain('451 4.3.0 <jo@example.test>: Temporary lookup failure');
    const p = await PolicyClient.connect(downPolicy);
    expect(await p.ask(policyRequest('127.0.0.51', 'a@remote.test', 'jo@example.test'))).toBe(
      '451 4.3.0 Temporary lookup failure',
    );
    p.close();
  });
});

describe('pre-approval from the command line (a login code that is waiting)', () => {
  it('lists the pending triplet, approves it, and the next retry passes before the delay', async () => {
    const cli = (...args: string[]) =>
      spawnSync(process.execPath, [path.join(repoRoot(), 'apps/greylist/dist/cli.js'), ...args], {
        env: { ...process.env, MOAT_CONFIG: chain.configFile },
        cwd: chain.dataDir,
        encoding: 'utf8',
        timeout: 15_000,
      });
    const first = await send('127.0.0.61', 'codes@bank.test', ['ida@example.test']);
    expect(first.replies).toContain(`451 4.7.1 <ida@example.test>: Recipient address rejected: ${HELP}`);
    const pending = cli('pending');
    expect(pending.status, pending.stderr).toBe(0);
    expect(pending.stdout).toMatch(/^127\.0\.0\.0\/codes@bank\.test\/ida@example\.test {2}first /m);
    const approved = cli('approve', '127.0.0.61', 'codes@bank.test', 'ida@example.test');
    expect(approved.status, approved.stderr).toBe(0);
    // well before the 2 s delay: passes, as a first pass with its X-Greylist header
    const retry = await send('127.0.0.61', 'codes@bank.test', ['ida@example.test']);
    expect(retry.exitCode, retry.output).toBe(0);
    const [msg] = await chain.waitForMail('ida@example.test');
    expect(headerValues(msg!.text, 'X-Greylist')).toHaveLength(1);
    // an unknown command is a usage error
    expect(cli('frobnicate').status).toBe(2);
  });
});

describe('our own network', () => {
  it('is never greylisted (Postfix: permit_mynetworks before the policy check)', async () => {
    const r = await send('127.0.0.1', 'local@example.test', ['hank@example.test']);
    expect(r.exitCode, r.output).toBe(0);
    await greylistLog(
      (l) => l.msg === 'action=pass, reason=mynetworks, client_address=127.0.0.1',
      'mynetworks',
    );
  });
});
