/**
 * open-store: picks the ReputationStore from the `store` setting. Exports openStore.
 *
 * - undefined, '' or 'sqlite' (the embedded default): SqliteStore on <dataDir>/reputation.sqlite;
 * - 'redis://host:port[/db]' or 'rediss://...': RedisStore;
 * - anything else rejects with StoreError('invalid').
 */
import { StoreError } from './errors.js';
import { RedisStore } from './redis-store.js';
import { SqliteStore } from './sqlite-store.js';
import type { ReputationStore, StoreOptions } from './types.js';

export async function openStore(setting: string | undefined, opts: StoreOptions): Promise<ReputationStore> {
  const value = (setting ?? '').trim();
  if (value === '' || value === 'sqlite') return SqliteStore.open(opts);
  if (/^rediss?:\/\//i.test(value)) return RedisStore.open(value, opts);
  throw new StoreError('invalid', `store must be 'sqlite' or a redis:// URL, got '${value}'`);
}
