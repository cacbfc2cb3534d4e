/**
 * Postfix's own path as the chain bench's yardstick: a private instance doing the chain's job,
 * postscreen (the loopback client is in mynetworks, passed to smtpd at once, as moat's screen passes
 * mynetworks clients) -> smtpd (reject_unauth_destination) -> cleanup -> queue (fsync) -> virtual(8)
 * into one Maildir (fsync). Its rate is what smtp-source gets accepted; each run then waits until
 * everything accepted is delivered, so the delivery does not overlap what is measured next, and its
 * CPU per message (all of the instance's processes) includes the delivery.
 * Exports startPostfixPath (called from main.ts).
 */
import fs from 'node:fs';
import path from 'node:path';
import { freePort, startPostfix, waitFor } from '@moat/testkit';
import { familyCpuMs, type MachineUse, throughput } from './measure.js';

export interface PostfixRun {
  perSecond: number;
  cpuMsPerMsg: number;
  /** False when the bounded wait for the delivery ran out (the next run overlaps it). */
  delivered: boolean;
  /** The whole machine while smtp-source ran. */
  machine: MachineUse;
}

export interface PostfixPath {
  /** Its postscreen's port. */
  readonly port: number;
  run(o: {
    messages: number;
    sessions: number;
    sizeBytes: number;
    perConnection: boolean;
  }): Promise<PostfixRun>;
  stop(): Promise<void>;
}

const VMAIL = 5000;

export async function startPostfixPath(): Promise<PostfixPath> {
  const port = await freePort();
  const pf = await startPostfix({
    port,
    main: (dir) => ({
      mynetworks: '127.0.0.0/8',
      virtual_mailbox_domains: 'example.test',
      virtual_mailbox_base: `${dir}/mail`,
      virtual_mailbox_maps: 'static:example.test/bench/',
      virtual_uid_maps: `static:${VMAIL}`,
      virtual_gid_maps: `static:${VMAIL}`,
      virtual_minimum_uid: '100',
      postscreen_access_list: 'permit_mynetworks',
      postscreen_cache_map: 'btree:$data_directory/postscreen_cache',
      default_process_limit: '100',
    }),
    master: [
      `${port} inet n - n - 1 postscreen`,
      'smtpd pass - - n - - smtpd',
      'dnsblog unix - - n - 0 dnsblog',
      'tlsproxy unix - - n - 0 tlsproxy',
      'virtual unix - n n - - virtual',
    ],
  });
  fs.mkdirSync(path.join(pf.dir, 'mail'));
  fs.chownSync(path.join(pf.dir, 'mail'), VMAIL, VMAIL);
  const inbox = path.join(pf.dir, 'mail', 'example.test', 'bench', 'new');
  const delivered = () => (fs.existsSync(inbox) ? fs.readdirSync(inbox).length : 0);
  let accepted = 0;
  return {
    port,
    async run(o) {
      const master = pf.masterPid();
      if (master === undefined) throw new Error("Postfix's master is gone");
      const before = familyCpuMs(master);
      const r = await throughput(port, o);
      if (!r.ok) throw new Error(`Postfix: smtp-source failed:\n${r.output}`);
      accepted += o.messages;
      const done = await waitFor(() => delivered() >= accepted || undefined, 30_000, 'delivery').catch(
        () => false,
      );
      return {
        perSecond: r.perSecond,
        cpuMsPerMsg: (familyCpuMs(master) - before) / o.messages,
        delivered: done,
        machine: r.machine,
      };
    },
    stop: () => pf.stop(),
  };
}
