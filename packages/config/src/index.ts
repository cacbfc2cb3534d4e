/**
 * @moat/config: the one configuration of every Moat service. See load.ts for the rules and
 * sections/ for every key with its default and meaning.
 */
export { ConfigError, loadConfig, type LoadOptions, type LoadedConfig } from './load.js';
export { connectAddress, derive, internalSizeLimit, schema, type MoatConfig } from './schema.js';
export { envName, envVariables, suggestVariable } from './env.js';
export { printConfig, maskSecrets } from './print.js';
export {
  formatDuration,
  formatHostPort,
  NetworkList,
  normalizeIp,
  parseCidr,
  parseDuration,
  parseHostPort,
  parseSize,
  type HostPort,
} from './units.js';
export { DEFAULT_BANNED_FILES, FILTER_CATEGORIES } from './sections/filter.js';
export { SCREEN_TESTS } from './sections/screen.js';
