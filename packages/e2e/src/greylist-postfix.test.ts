/**
 * A real Postfix (3.x, a private instance: its own main.cf/master.cf, queue and maillog, no systemd)
 * with `smtpd_recipient_restrictions = reject_unauth_destination, check_policy_service
 * inet:127.0.0.1:<greylist.policyListen>`, exactly where Postgrey would sit: swaks gets Postfix's
 * 450 4.2.0 for DEFER_IF_PERMIT, then 250 after the delay. Needs root (Postfix's master) and the
 * Debian postfix package; skipped otherwise.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Chain, freePort, swaks, tmpDir, waitFor, which } from '@moat/testkit';
import { startTinyDns, type TinyDns } from './greylist-support.js';

const HELP = 'Greylisted, see http://postgrey.schweikert.ch/help/example.test.html';
const canRun = process.getuid?.() === 0 && which('postfix') !== undefined;

function postfix(dir: string, cmd: string): { status: number | null; output: string } {
  // postfix writes its fatal messages to the terminal only; `script` gives it one
  const r = spawnSync('script', ['-qc', `postfix -c ${dir}/etc ${cmd}`, '/dev/null'], { encoding: 'utf8' });
  return { status: r.status, output: `${r.stdout}${r.stderr}` };
}

function instance(dir: string, smtpPort: number, policyPort: number): void {
  fs.mkdirSync(path.join(dir, 'etc'), { recursive: true });
  fs.mkdirSync(path.join(dir, 'queue'));
  fs.mkdirSync(path.join(dir, 'data'));
  fs.chmodSync(dir, 0o755);
  spawnSync('chown', ['postfix', path.join(dir, 'data')]);
  fs.writeFileSync(
    path.join(dir, 'etc', 'main.cf'),
    [
      'compatibility_level = 3.6',
      `queue_directory = ${dir}/queue`,
      `data_directory = ${dir}/data`,
      'mail_owner = postfix',
      'setgid_group = postdrop',
      'myhostname = pf.example.test',
      'mydestination =',
      'relay_domains = example.test',
      'relay_transport = discard:',
      'default_transport = discard:',
      'inet_interfaces = 127.0.0.1',
      'inet_protocols = ipv4',
      `maillog_file = ${dir}/maillog`,
      `maillog_file_prefixes = ${path.dirname(dir)}`,
      'mynetworks = 127.0.0.1/32',
      'smtpd_relay_restrictions = reject_unauth_destination',
      `smtpd_recipient_restrictions = reject_unauth_destination, check_policy_service inet:127.0.0.1:${policyPort}`,
      'alias_maps =',
      'alias_database =',
      'local_recipient_maps =',
      'smtpd_banner = $myhostname ESMTP',
      '',
    ].join('\n'),
  );
  fs.writeFileSync(
    path.join(dir, 'etc', 'master.cf'),
    [
      `${smtpPort} inet n - n - - smtpd`,
      'cleanup unix n - n - 0 cleanup',
      'qmgr unix n - n 300 1 qmgr',
      'rewrite unix - - n - - trivial-rewrite',
      'bounce unix - - n - 0 bounce',
      'defer unix - - n - 0 bounce',
      'trace unix - - n - 0 bounce',
      'verify unix - - n - 1 verify',
      'flush unix n - n 1000? 0 flush',
      'proxymap unix - - n - - proxymap',
      'showq unix n - n - - showq',
      'error unix - - n - - error',
      'retry unix - - n - - error',
      'discard unix - - n - - discard',
      'anvil unix - - n - 1 anvil',
      'scache unix - - n - 1 scache',
      'postlog unix-dgram n - n - 1 postlogd',
      '',
    ].join('\n'),
  );
}

describe.skipIf(!canRun)('moat-greylist as the policy server of a real Postfix', () => {
  let chain: Chain;
  let dns: TinyDns;
  let dir: string;
  let smtpPort: number;
  let started = false;

  beforeAll(async () => {
    dns = await startTinyDns({});
    const policyPort = await freePort();
    chain = await Chain.create({
      services: ['greylist'],
      config: {
        dns: { servers: [dns.server], timeout: '1s' },
        greylist: { enabled: true, delay: '2s', policyListen: `127.0.0.1:${policyPort}` },
      },
    });
    dir = tmpDir('moat-postfix-');
    smtpPort = await freePort();
    instance(dir, smtpPort, policyPort);
    const r = postfix(dir, 'start');
    if (r.status !== 0) throw new Error(`postfix start failed: ${r.output}`);
    started = true;
    await waitFor(
      async () =>
        (await swaks(['--server', `127.0.0.1:${smtpPort}`, '--quit-after', 'CONNECT'])).exitCode === 0 ||
        undefined,
      10_000,
      'Postfix smtpd',
    );
  }, 60_000);

  afterAll(async () => {
    if (started) postfix(dir, 'stop');
    await chain?.stop();
    await dns?.close();
  });

  it('relays DEFER_IF_PERMIT as 450 4.2.0, accepts the retry after the delay, and still refuses relaying', async () => {
    const send = () =>
      swaks(['--server', `127.0.0.1:${smtpPort}`, '--from', 'alice@remote.test', '--to', 'bob@example.test']);
    const first = await send();
    expect(first.replies, first.output).toContain(
      `450 4.2.0 <bob@example.test>: Recipient address rejected: ${HELP}`,
    );
    await chain
      .service('greylist')
      .waitForLog(
        (l) =>
          l.msg.startsWith('action=greylist, reason=new') &&
          String(l.msg).includes('client_address=127.0.0.1'),
        5000,
        'new',
      );
    await new Promise((r) => setTimeout(r, 2100));
    const retry = await send();
    expect(retry.exitCode, retry.output).toBe(0);
    expect(retry.replies.some((l) => /^250 2\.0\.0 Ok: queued as /.test(l))).toBe(true);
    await chain
      .service('greylist')
      .waitForLog((l) => /^action=pass, reason=triplet found, delay=\d+/.test(l.msg), 5000, 'pass');
    const relay = await swaks([
      '--server',
      `127.0.0.1:${smtpPort}`,
      '--from',
      'alice@remote.test',
      '--to',
      'x@elsewhere.test',
    ]);
    expect(relay.replies).toContain('554 5.7.1 <x@elsewhere.test>: Relay access denied');
  });
});
