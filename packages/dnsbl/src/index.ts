/**
 * @moat/dnsbl: DNSBL/DNSWL lookups for the screen, in postscreen's terms (site syntax, weights,
 * reply filters, threshold, reply map, TTL clamping, log texts) plus the error-code safety and
 * test-point checks postscreen lacks. Node built-ins only. A DNS timeout, SERVFAIL or error code is
 * never a listing.
 */
export {
  DnsblChecker,
  DEFAULTS,
  type BrokenZone,
  type CheckerOptions,
  type Clock,
  type Contribution,
  type DnsblResult,
  type LogFn,
  type LogLevel,
  type ScoreOptions,
  type ZoneError,
  type ZoneRole,
  type ZoneState,
  type ZoneStatus,
} from './checker.js';
export {
  DnsblConfigError,
  matchesFilter,
  parseFilter,
  parseSites,
  zonesOf,
  type Filter,
  type OctetRanges,
  type Site,
} from './sites.js';
export { parseReplyMap, publicName, type ReplyMap, type ReplyMapInput } from './reply-map.js';
export { expandIPv6, normalizeIp, reverseName } from './reverse.js';
export { isErrorCode, TEST_LISTED, TEST_UNLISTED } from './safety.js';
export {
  classify,
  createResolver,
  queryA,
  type Answer,
  type ARecord,
  type DnsLookup,
  type ErrorKind,
} from './resolver.js';
export { listedLine, rankLine, replyText, UNKNOWN_ZONE } from './texts.js';
export { DEFAULT_THRESHOLD, verdict, type Thresholds, type Verdict } from './verdict.js';
