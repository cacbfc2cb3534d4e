/**
 * @moat/daemons: the real daemons (clamd, spamd, redis, rbldnsd) on loopback for tests and
 * development, and the tools they need. Each start* writes its config under stateDir, starts the
 * daemon on a free port (or the given one), waits until it answers its protocol, and returns a
 * handle whose stop() kills exactly that process. cli.ts wraps it all for `npm test`/`npm start`.
 */
export {
  clamdConfig,
  clamdPing,
  clamdScan,
  eicar,
  EICAR_HEX,
  eicarSignature,
  startClamd,
  type ClamdConfigParams,
  type ClamdHandle,
} from './clamd.js';
export {
  spamdArgs,
  spamdCheck,
  spamdLocalCf,
  spamdPing,
  spamcRequest,
  startSpamd,
  type SpamdArgsParams,
  type SpamdOptions,
  type SpamdVerdict,
} from './spamd.js';
export { redisArgs, redisPing, startRedis } from './redis.js';
export {
  appendZone,
  formatZone,
  rbldnsdArgs,
  startRbldnsd,
  writeZone,
  ZONE_TYPES,
  zoneSpec,
  type RbldnsdHandle,
  type RbldnsdOptions,
  type Zone,
  type ZoneType,
} from './rbldnsd.js';
export {
  dnsResolver,
  freePort,
  isAlive,
  stopPid,
  type CommonOptions,
  type DaemonExit,
  type DaemonHandle,
} from './process.js';
export {
  ALL_TOOLS,
  aptInstallArgs,
  checkTools,
  DEBIAN_PACKAGES,
  ensureInstalled,
  findTool,
  installHint,
  packagesFor,
  TOOL_PACKAGES,
  type EnsureOptions,
  type Tool,
  type ToolCheck,
} from './tools.js';
export {
  DAEMON_TOOLS,
  DAEMONS,
  ENV,
  startSuite,
  suiteEnv,
  TEST_ZONES,
  type DaemonName,
  type Suite,
  type SuiteOptions,
} from './suite.js';
