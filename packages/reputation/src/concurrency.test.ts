/**
 * concurrency.test: greylistCheck stays atomic under contention. Several store instances (in one
 * process, and in separate Node processes running the built dist) hammer the same keys at the same
 * instant; for every key exactly one caller must see 'new' and the rest 'early-retry'. Run against
 * one SQLite file and one real Redis. Also: one Redis cleanup at a time (lock key).
 */
import { execFile, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';
import { Redis } from 'ioredis';
import type { GreylistResult, ReputationStore } from './types.js';
import { GREY, T0, useBackends, type Location } from './test/backends.js';

const run = promisify(execFile);
const { backends, redis, tmp } = useBackends();
const KEYS = 200;
const PROCESSES = 3;

const pkgDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const distIndex = path.join(pkgDir, 'dist', 'index.js');

/** The child processes import the built package; build it when missing or older than src. */
function ensureBuilt(): void {
  const newest = (dir: string): number =>
    fs.readdirSync(dir, { withFileTypes: true }).reduce((max, e) => {
      const p = path.join(dir, e.name);
      return Math.max(max, e.isDirectory() ? newest(p) : fs.statSync(p).mtimeMs);
    }, 0);
  if (fs.existsSync(distIndex) && fs.statSync(distIndex).mtimeMs >= newest(path.join(pkgDir, 'src'))) return;
  const tsc = path.join(pkgDir, '..', '..', 'node_modules', 'typescript', 'bin', 'tsc');
  execFileSync(process.execPath, [tsc, '-p', path.join(pkgDir, 'tsconfig.build.json')], { stdio: 'inherit' });
}

const CHILD = `
const [distUrl, setting, dataDir, prefix, keys, startAt, now, params] = process.argv.slice(1);
const { openStore } = await import(distUrl);
const store = await openStore(setting, { dataDir, prefix, timeoutMs: 5000 });
while (Date.now() < Number(startAt)) {}
const grey = { now: Number(now), ...JSON.parse(params) };
const reasons = [];
for (let i = 0; i < Number(keys); i++) reasons.push((await store.greylistCheck('k' + i, grey)).reason);
await store.close();
process.stdout.write(JSON.stringify(reasons));
`;

function countNew(perCaller: string[][]): number[] {
  const news = new Array<number>(KEYS).fill(0);
  for (const reasons of perCaller)
    reasons.forEach((r, i) => (news[i] = (news[i] ?? 0) + (r === 'new' ? 1 : 0)));
  return news;
}

async function hammerInProcess(stores: ReputationStore[]): Promise<string[][]> {
  return Promise.all(
    stores.map(async (store) => {
      const pending: Promise<GreylistResult>[] = [];
      for (let i = 0; i < KEYS; i++) pending.push(store.greylistCheck(`k${i}`, { now: T0, ...GREY }));
      return (await Promise.all(pending)).map((r) => r.reason);
    }),
  );
}

async function hammerInProcesses(where: Location): Promise<string[][]> {
  // No store is opened first: the children also race to create the SQLite file and its schema.
  const startAt = Date.now() + 1500;
  const children = Array.from({ length: PROCESSES }, () =>
    run(
      process.execPath,
      [
        '--input-type=module',
        '-e',
        CHILD,
        pathToFileURL(distIndex).href,
        where.setting,
        where.dataDir,
        where.prefix,
        String(KEYS),
        String(startAt),
        String(T0),
        JSON.stringify(GREY),
      ],
      { timeout: 20_000 },
    ),
  );
  return (await Promise.all(children)).map(({ stdout }) => JSON.parse(stdout) as string[]);
}

beforeAll(() => ensureBuilt(), 60_000);

describe.each(backends)('$name: greylistCheck is atomic', (backend) => {
  it('two store instances in one process: exactly one new per key', async () => {
    const where = backend.fresh();
    const results = await hammerInProcess([await where.open(), await where.open()]);
    expect(countNew(results)).toEqual(new Array(KEYS).fill(1));
    expect(results.flat().filter((r) => r === 'early-retry')).toHaveLength(KEYS);
  });

  it(`${PROCESSES} separate Node processes: exactly one new per key`, async () => {
    const results = await hammerInProcesses(backend.fresh());
    expect(results).toHaveLength(PROCESSES);
    expect(countNew(results)).toEqual(new Array(KEYS).fill(1));
    expect(results.flat().filter((r) => r === 'early-retry')).toHaveLength(KEYS * (PROCESSES - 1));
  }, 30_000);
});

describe('redis cleanup', () => {
  it('runs once at a time across clients (SET NX PX lock)', async () => {
    const where = backends[1]!.fresh();
    const a = await where.open();
    const b = await where.open();
    await a.recordPass('192.0.2.1', 'pregreet', 1000, T0);
    const runs = await Promise.all([a.cleanup(T0), b.cleanup(T0)]);
    expect(runs.map((r) => r.skipped).sort()).toEqual([false, true]);
    expect(runs.find((r) => !r.skipped)).toEqual({ retained: 1, dropped: 0, skipped: false });

    // Held by another process: skipped; released: runs.
    const raw = new Redis(redis().address);
    try {
      await raw.set(`${where.prefix}lock:cleanup`, 'other-process', 'PX', 60_000);
      expect(await a.cleanup(T0)).toEqual({ retained: 0, dropped: 0, skipped: true });
      await raw.del(`${where.prefix}lock:cleanup`);
      expect(await a.cleanup(T0)).toEqual({ retained: 1, dropped: 0, skipped: false });
    } finally {
      raw.disconnect();
    }
    expect(fs.existsSync(tmp())).toBe(true);
  });
});
