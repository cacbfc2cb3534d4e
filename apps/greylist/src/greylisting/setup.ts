/**
 * setup: builds the greylisting engine and the known-recipient table from the configuration (the
 * store, the watched whitelist and recipient files, the resolver for SPF and reverse names, the
 * maintenance timer). Exports setupGreylisting and Greylisting. The MX smtpd, the policy port and the
 * command line all build it here, so they agree on every key and setting.
 */
import type { MoatConfig } from '@moat/config';
import type { Logger } from '@moat/log';
import { openStore, type ReputationStore } from '@moat/reputation';
import { makeResolver } from './dns.js';
import { GreylistEngine } from './engine.js';
import { startMaintenance } from './maintenance.js';
import { ReverseNames } from './rdns.js';
import { compileRecipients, type KnownRecipients } from './recipients.js';
import { SpfChecker } from './spf.js';
import { WatchedList } from './watched-list.js';
import {
  compileClientWhitelist,
  compileRecipientWhitelist,
  defaultWhitelistFile,
  type ClientWhitelist,
  type RecipientWhitelist,
} from './whitelist.js';

export interface Greylisting {
  engine: GreylistEngine;
  store: ReputationStore;
  recipients: { readonly current: KnownRecipients };
  close(): Promise<void>;
}

export async function setupGreylisting(
  config: Readonly<MoatConfig>,
  logger: Logger,
  o: { maintenance?: boolean; clock?: () => number } = {},
): Promise<Greylisting> {
  const c = config.greylist;
  const store = await openStore(config.store, { dataDir: config.dataDir, timeoutMs: c.storeTimeout });
  const clientFiles = [
    ...(c.useDefaultWhitelist ? [defaultWhitelistFile()] : []),
    ...c.whitelistClientsFiles,
  ];
  const clients = new WatchedList<ClientWhitelist>(
    'whitelist_clients',
    c.whitelistClients,
    clientFiles,
    compileClientWhitelist,
    logger,
  );
  const rcptWhitelist = new WatchedList<RecipientWhitelist>(
    'whitelist_recipients',
    c.whitelistRecipients,
    c.whitelistRecipientsFiles,
    compileRecipientWhitelist,
    logger,
  );
  const tableOn = config.recipients.length > 0 || config.recipientsFiles.length > 0;
  const recipients = new WatchedList<KnownRecipients>(
    'recipients',
    config.recipients,
    config.recipientsFiles,
    (entries) => compileRecipients(entries, tableOn),
    logger,
  );
  const resolver = makeResolver(config.dns.servers, config.dns.timeout);
  const engine = new GreylistEngine(
    { ...c, hostname: config.hostname },
    {
      store,
      clients,
      recipients: rcptWhitelist,
      rdns: c.reverseLookup ? new ReverseNames(resolver, config.dns.timeout) : undefined,
      spf: c.spfKeying
        ? new SpfChecker(resolver, config.dns.timeout, c.spfCacheTtl, config.hostname)
        : undefined,
      logger,
      ...(o.clock ? { clock: o.clock } : {}),
    },
  );
  const maintenance =
    o.maintenance === false || !c.enabled
      ? undefined
      : startMaintenance(
          store,
          { intervalMs: c.maintenanceInterval, maxAgeMs: c.maxAge, retryWindowMs: c.retryWindow },
          logger,
        );
  return {
    engine,
    store,
    recipients,
    async close() {
      maintenance?.stop();
      clients.close();
      rcptWhitelist.close();
      recipients.close();
      await store.close();
    },
  };
}
