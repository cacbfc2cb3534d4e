/**
 * test/backends: the two store backends the shared suites run against. Exports useBackends (starts
 * one real Redis for the calling test file, via @moat/daemons, and stops it afterwards), T0 and the
 * Postgrey parameters the suites use. Each `fresh()` names a new, empty store location (a new
 * SQLite data directory, a new Redis key prefix); `open()` on it can be called several times, as
 * several processes or a restart would.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll } from 'vitest';
import { startRedis, type DaemonHandle } from '@moat/daemons';
import { openStore } from '../open-store.js';
import { DAY_MS, type ReputationStore } from '../types.js';

export const T0 = Date.UTC(2025, 0, 1, 12, 0, 0);
export const GREY = { delayMs: 300_000, retryWindowMs: 2 * DAY_MS, maxAgeMs: 35 * DAY_MS };

export interface Location {
  setting: string;
  dataDir: string;
  prefix: string;
  open(extra?: { timeoutMs?: number; retentionMs?: number }): Promise<ReputationStore>;
}

export interface Backend {
  name: 'sqlite' | 'redis';
  fresh(): Location;
}

let counter = 0;

/** Call at the top level of a test file. Stores opened through fresh() are closed after the file. */
export function useBackends(): { backends: Backend[]; redis: () => DaemonHandle; tmp: () => string } {
  let redis: DaemonHandle | undefined;
  let tmp = '';
  const opened: ReputationStore[] = [];

  beforeAll(async () => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'moat-reputation-'));
    fs.chmodSync(tmp, 0o755); // as root, redis-server drops privileges and must reach its folder
    redis = await startRedis({ stateDir: path.join(tmp, 'redis') });
  }, 30_000);

  afterAll(async () => {
    await Promise.all(opened.map((s) => s.close().catch(() => undefined)));
    await redis?.stop();
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  const location = (name: Backend['name']): Location => {
    const n = ++counter;
    const dataDir = path.join(tmp, `data-${n}`);
    const prefix = `t${n}:`;
    const setting = name === 'sqlite' ? 'sqlite' : (redis?.address ?? 'redis://127.0.0.1:1');
    return {
      setting,
      dataDir,
      prefix,
      async open(extra = {}) {
        const store = await openStore(setting, { dataDir, prefix, timeoutMs: 2000, ...extra });
        opened.push(store);
        return store;
      },
    };
  };

  return {
    backends: [
      { name: 'sqlite', fresh: () => location('sqlite') },
      { name: 'redis', fresh: () => location('redis') },
    ],
    redis: () => {
      if (!redis) throw new Error('redis not started yet');
      return redis;
    },
    tmp: () => tmp,
  };
}
