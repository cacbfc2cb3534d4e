/**
 * @moat/reputation: the reputation store screen and greylist share, keyed by client address:
 * postscreen's per-test passes and expiries, DNSWL trust, Postgrey's triplets and AWL counts. One
 * SQLite file under the data directory on one machine, Redis across machines (`store: redis://...`).
 * Every failure is a StoreError, which callers answer with a 4xx, never a pass.
 */
export { openStore } from './open-store.js';
export { SqliteStore, SQLITE_FILE } from './sqlite-store.js';
export { RedisStore, type RedisStoreOptions } from './redis-store.js';
export { StoreError, type StoreErrorKind } from './errors.js';
export { dnswlTrusted, passOld, validPasses } from './client-record.js';
export { clientTrust, decideTriplet, type TripletState } from './greylist-rules.js';
export {
  AWL_INTERVAL_MS,
  DAY_MS,
  DEFAULT_DELAY_MS,
  DEFAULT_MAX_AGE_MS,
  DEFAULT_RETENTION_MS,
  DEFAULT_RETRY_WINDOW_MS,
  DEFAULT_TIMEOUT_MS,
  HOUR_MS,
  type AwlOptions,
  type CleanupResult,
  type ClientRecord,
  type DnswlTrust,
  type GreylistAnswer,
  type GreylistParams,
  type GreylistQuery,
  type GreylistResult,
  type MaintenanceParams,
  type MaintenanceResult,
  type PendingTriplet,
  type ReputationStore,
  type StoreOptions,
  type TestPass,
} from './types.js';
