/**
 * A real Postfix (3.x, a private instance: its own main.cf/master.cf, queue and maillog, no systemd)
 * with `smtpd_recipient_restrictions = reject_unauth_destination, check_policy_service
 * inet:127.0.0.1:<greylist.policyListen>`, exactly where Postgrey would sit: swaks gets Postfix's
 * 450 4.2.0 for DEFER_IF_PERMIT, then 250 after the delay. Needs root (Postfix's master) and the
 * Debian postfix package; skipped otherwise.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  Chain,
  freePort,
  postfixUnavailable,
  startPostfix,
  swaks,
  waitFor,
  type PostfixInstance,
} from '@moat/testkit';
import { startTinyDns, type TinyDns } from './greylist-support.js';

const HELP = 'Greylisted, see http://postgrey.schweikert.ch/help/example.test.html';

describe.skipIf(postfixUnavailable() !== undefined)(
  'moat-greylist as the policy server of a real Postfix',
  () => {
    let chain: Chain;
    let dns: TinyDns;
    let postfix: PostfixInstance | undefined;
    let smtpPort: number;

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
      smtpPort = await freePort();
      postfix = await startPostfix({
        port: smtpPort,
        main: {
          relay_domains: 'example.test',
          relay_transport: 'discard:',
          default_transport: 'discard:',
          smtpd_recipient_restrictions: `reject_unauth_destination, check_policy_service inet:127.0.0.1:${policyPort}`,
        },
      });
      await waitFor(
        async () =>
          (await swaks(['--server', `127.0.0.1:${smtpPort}`, '--quit-after', 'CONNECT'])).exitCode === 0 ||
          undefined,
        10_000,
        'Postfix smtpd',
      );
    }, 60_000);

    afterAll(async () => {
      await postfix?.stop();
      await chain?.stop();
      await dns?.close();
    });

    it('relays DEFER_IF_PERMIT as 450 4.2.0, accepts the retry after the delay, and still refuses relaying', async () => {
      const send = () =>
        swaks([
          '--server',
          `127.0.0.1:${smtpPort}`,
          '--from',
          'alice@remote.test',
          '--to',
          'bob@example.test',
        ]);
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
  },
);
