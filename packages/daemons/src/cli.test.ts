import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { isAlive } from './index.js';

// The compiled CLI: `npm test` builds before testing (turbo's test task depends on build).
const CLI = fileURLToPath(new URL('../dist/cli.js', import.meta.url));
const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'moat-daemons-cli-'));
afterAll(() => fs.rmSync(stateDir, { recursive: true, force: true }));

const PRINT_ENV =
  'const e = Object.fromEntries(Object.entries(process.env).filter(([k]) => k.startsWith("MOAT_")));' +
  'console.log(JSON.stringify(e)); process.exit(3)';

function cli(args: string[], env: NodeJS.ProcessEnv = {}) {
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('MOAT_')));
  const res = spawnSync(process.execPath, [CLI, ...args], { env: { ...clean, ...env }, encoding: 'utf8' });
  return { code: res.status, stdout: res.stdout, stderr: res.stderr };
}

describe.skipIf(!fs.existsSync(CLI))('cli (dist/cli.js)', { timeout: 30_000 }, () => {
  it('run: starts the daemons, hands their variables to the command, stops them, exits with its code', () => {
    const res = cli([
      'run',
      '--only',
      'redis,rbldnsd',
      '--state',
      stateDir,
      '--',
      process.execPath,
      '-e',
      PRINT_ENV,
    ]);
    expect(res.code, res.stderr).toBe(3);
    const env = JSON.parse(res.stdout.trim()) as Record<string, string>;
    expect(env.MOAT_TEST_REDIS).toMatch(/^redis:\/\/127\.0\.0\.1:\d+$/);
    expect(env.MOAT_TEST_RBLDNSD).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(env.MOAT_DAEMONS_STATE).toBe(stateDir);
    expect(env.MOAT_TEST_CLAMD).toBeUndefined();
    expect(fs.readdirSync(env.MOAT_TEST_RBLDNSD_DIR!).sort()).toEqual(['dnswl.zone', 'zen4.zone']);
    const pids = [...res.stderr.matchAll(/ pid (\d+) /g)].map((m) => Number(m[1]));
    expect(pids).toHaveLength(2);
    for (const pid of pids) expect(isAlive(pid)).toBe(false);
  });

  it('run: reuses a daemon whose variable is already set', () => {
    const given = 'redis://127.0.0.1:1';
    const res = cli(
      ['run', '--only', 'redis', '--state', stateDir, '--', process.execPath, '-e', PRINT_ENV],
      {
        MOAT_TEST_REDIS: given,
      },
    );
    expect(res.code).toBe(3);
    expect((JSON.parse(res.stdout.trim()) as Record<string, string>).MOAT_TEST_REDIS).toBe(given);
    expect(res.stderr).toContain('reused from MOAT_TEST_REDIS');
  });

  it('rejects bad usage with exit code 2', () => {
    expect(cli(['run']).code).toBe(2);
    expect(cli(['run', '--only', 'postgres', '--', 'true']).stderr).toMatch(/unknown daemon postgres/);
    expect(cli(['frobnicate']).code).toBe(2);
  });
});
