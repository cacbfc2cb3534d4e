/**
 * suite: the four daemons Moat's tests use, started together in parallel and described by
 * environment variables. Exports DAEMONS, DAEMON_TOOLS, ENV (the variable names), TEST_ZONES (empty
 * zen.test and dnswl.test ip4set zones), startSuite (skips any daemon whose variable is already set
 * when reuse is on; on any failure stops what it started) and suiteEnv.
 */
import path from 'node:path';
import { type ClamdHandle, startClamd } from './clamd.js';
import type { DaemonHandle } from './process.js';
import { type RbldnsdHandle, startRbldnsd, type Zone } from './rbldnsd.js';
import { startRedis } from './redis.js';
import { startSpamd } from './spamd.js';
import type { Tool } from './tools.js';

export const DAEMONS = ['clamd', 'spamd', 'redis', 'rbldnsd'] as const;
export type DaemonName = (typeof DAEMONS)[number];

export const DAEMON_TOOLS: Record<DaemonName, Tool> = {
  clamd: 'clamd',
  spamd: 'spamd',
  redis: 'redis-server',
  rbldnsd: 'rbldnsd',
};

/** The variables `run` hands to the command. */
export const ENV = {
  clamd: 'MOAT_TEST_CLAMD',
  clamdSocket: 'MOAT_TEST_CLAMD_SOCKET',
  spamd: 'MOAT_TEST_SPAMD',
  redis: 'MOAT_TEST_REDIS',
  rbldnsd: 'MOAT_TEST_RBLDNSD',
  rbldnsdDir: 'MOAT_TEST_RBLDNSD_DIR',
  state: 'MOAT_DAEMONS_STATE',
} as const;

export const TEST_ZONES: readonly Zone[] = [
  { name: 'zen.test', type: 'ip4set', file: 'zen4.zone' },
  { name: 'dnswl.test', type: 'ip4set', file: 'dnswl.zone' },
];

export interface SuiteOptions {
  stateDir: string;
  /** Default: all four. */
  only?: readonly DaemonName[];
  /** Skip a daemon whose variable (MOAT_TEST_CLAMD, ...) is already set in env. */
  reuse?: boolean;
  env?: NodeJS.ProcessEnv;
  detached?: boolean;
  /** Called as each daemon answers. */
  onReady?: (handle: DaemonHandle) => void;
}

export interface Suite {
  stateDir: string;
  /** The daemons started here, in DAEMONS order. */
  handles: DaemonHandle[];
  /** Daemons not started because their variable was already set. */
  reused: DaemonName[];
  /** The variables for the daemons started here (plus MOAT_DAEMONS_STATE). */
  env: Record<string, string>;
  stop(): Promise<void>;
}

export function suiteEnv(handles: readonly DaemonHandle[], stateDir: string): Record<string, string> {
  const env: Record<string, string> = { [ENV.state]: stateDir };
  for (const h of handles) {
    if (h.name === 'clamd') {
      env[ENV.clamd] = h.address;
      env[ENV.clamdSocket] = (h as ClamdHandle).socket;
    } else if (h.name === 'spamd') env[ENV.spamd] = h.address;
    else if (h.name === 'redis') env[ENV.redis] = h.address;
    else if (h.name === 'rbldnsd') {
      env[ENV.rbldnsd] = h.address;
      env[ENV.rbldnsdDir] = (h as RbldnsdHandle).dir;
    }
  }
  return env;
}

export async function startSuite(opts: SuiteOptions): Promise<Suite> {
  const env = opts.env ?? process.env;
  const wanted = DAEMONS.filter((d) => !opts.only || opts.only.includes(d));
  const reused = opts.reuse ? wanted.filter((d) => env[ENV[d]]) : [];
  const toStart = wanted.filter((d) => !reused.includes(d));
  const common = { stateDir: opts.stateDir, detached: opts.detached };
  const starters: Record<DaemonName, () => Promise<DaemonHandle>> = {
    clamd: () => startClamd(common),
    spamd: () => startSpamd(common),
    redis: () => startRedis(common),
    rbldnsd: () => startRbldnsd({ ...common, dir: path.join(opts.stateDir, 'rbldnsd'), zones: TEST_ZONES }),
  };
  const results = await Promise.allSettled(
    toStart.map(async (d) => {
      const h = await starters[d]();
      opts.onReady?.(h);
      return h;
    }),
  );
  const handles = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
  const stop = async () => {
    await Promise.all(handles.map((h) => h.stop()));
  };
  const failed = results.flatMap((r) => (r.status === 'rejected' ? [r.reason as unknown] : []));
  if (failed.length > 0) {
    await stop();
    const text = failed.map((e) => (e instanceof Error ? e.message : String(e))).join('\n\n');
    throw new Error(`could not start every daemon:\n${text}`);
  }
  return { stateDir: opts.stateDir, handles, reused, env: suiteEnv(handles, opts.stateDir), stop };
}
