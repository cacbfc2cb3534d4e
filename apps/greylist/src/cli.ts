#!/usr/bin/env node
/**
 * cli: the operator's greylist commands, on the same configuration and store as the service.
 *
 *   node apps/greylist/dist/cli.js pending [N]                        triplets waiting (never passed), newest first
 *   node apps/greylist/dist/cli.js approve <client-ip|net|domain> <sender> <recipient>
 *   node apps/greylist/dist/cli.js approve <key>                      a key exactly as `pending` prints it
 *
 * approve pre-approves a waiting triplet (a login code held by greylisting): its next retry passes
 * at once, as a first pass (X-Greylist added), if it comes within greylist.approveTtl. The client is
 * turned into its network as the service keys it (lookupBy, ipv4Cidr, ipv6Cidr); a domain instead of
 * an address approves the SPF-keyed triplet (spf:<domain>). Exit codes: 0 done, 1 nothing to approve
 * (already passed), 2 usage, 75 the store failed (EX_TEMPFAIL), 78 bad configuration.
 */
import net from 'node:net';
import { ConfigError, loadConfig } from '@moat/config';
import { openStore, StoreError } from '@moat/reputation';
import { clientNetwork, spfTripletKey, tripletKey } from './greylisting/key.js';

const USAGE = `usage: moat-greylist pending [N]
       moat-greylist approve <client-ip|network|domain> <sender> <recipient>
       moat-greylist approve <key>`;

function out(text: string): void {
  process.stdout.write(text + '\n');
}

/** The key the service would use for this client, sender and recipient. */
export function approvalKey(
  client: string,
  sender: string,
  recipient: string,
  o: { lookupBy: 'subnet' | 'host'; ipv4Cidr: number; ipv6Cidr: number },
): string {
  const addr = client.replace(/\/\d+$/, '');
  if (net.isIP(addr) === 0)
    return spfTripletKey(client.replace(/^spf:/i, '').toLowerCase(), sender, recipient);
  return tripletKey(clientNetwork(addr, o), sender, recipient);
}

async function main(argv: string[]): Promise<number> {
  const [cmd, ...args] = argv;
  if (cmd !== 'pending' && cmd !== 'approve') {
    process.stderr.write(USAGE + '\n');
    return 2;
  }
  let config;
  try {
    config = loadConfig().config;
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`moat-greylist: ${err.message}\n`);
      return 78;
    }
    throw err;
  }
  const c = config.greylist;
  const store = await openStore(config.store, { dataDir: config.dataDir, timeoutMs: c.storeTimeout });
  try {
    if (cmd === 'pending') {
      const list = await store.listPending(Number(args[0] ?? 50));
      for (const p of list) {
        const approved = p.approvedUntil ? `  approved until ${new Date(p.approvedUntil).toISOString()}` : '';
        out(
          `${p.key}  first ${new Date(p.firstSeen).toISOString()}  last ${new Date(p.lastSeen).toISOString()}${approved}`,
        );
      }
      if (!list.length) out('no pending triplets');
      return 0;
    }
    let key: string;
    if (args.length === 1) key = args[0]!.toLowerCase();
    else if (args.length === 3) key = approvalKey(args[0]!, args[1]!, args[2]!, c);
    else {
      process.stderr.write(USAGE + '\n');
      return 2;
    }
    const ok = await store.approveTriplet(key, c.approveTtl);
    out(
      ok
        ? `approved ${key} for ${Math.round(c.approveTtl / 1000)}s`
        : `${key} has already passed: nothing to approve`,
    );
    return ok ? 0 : 1;
  } catch (err) {
    if (err instanceof StoreError) {
      process.stderr.write(`moat-greylist: store failed: ${err.message}\n`);
      return 75;
    }
    throw err;
  } finally {
    await store.close().catch(() => undefined);
  }
}

if (process.argv[1] && import.meta.url === new URL(`file://${process.argv[1]}`).href) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err: unknown) => {
      process.stderr.write(`moat-greylist: ${(err as Error).stack ?? String(err)}\n`);
      process.exit(1);
    },
  );
}
