/**
 * npm start's launcher and the services' command line: the whole chain under the launcher carries a
 * message and stops cleanly on SIGTERM; a bad setting stops a service before it listens, naming the
 * key (and the variable it came from); --print-config prints the effective values with secrets masked.
 */
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import YAML from 'yaml';
import { describe, expect, it } from 'vitest';
import { freePort, maildirMessages, repoRoot, swaks, tmpDir, waitFor } from '@moat/testkit';

const root = repoRoot();

async function configFile(): Promise<{ file: string; dataDir: string; screen: number }> {
  const dataDir = tmpDir('moat-launcher-');
  const port = async () => `127.0.0.1:${await freePort()}`;
  const screen = await freePort();
  const config = {
    hostname: 'mx.example.test',
    domains: ['example.test'],
    dataDir,
    screen: { listen: `127.0.0.1:${screen}` },
    greylist: { listen: await port(), enabled: false },
    filter: { listen: await port() },
    delivery: { listen: await port() },
    quarantine: { listen: await port(), http: await port() },
  };
  const file = path.join(dataDir, 'moat.yaml');
  fs.writeFileSync(file, YAML.stringify(config));
  return { file, dataDir, screen };
}

function cleanEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env = { ...process.env };
  for (const k of Object.keys(env)) if (k.startsWith('MOAT_')) delete env[k];
  return { ...env, ...extra };
}

describe('the launcher (npm start)', () => {
  it('runs the five services, carries a message into the Maildir, and stops them gracefully on Ctrl-C', async () => {
    const { file, dataDir, screen } = await configFile();
    const child = spawn(process.execPath, [path.join(root, 'packages/launcher/dist/main.js')], {
      cwd: dataDir,
      env: cleanEnv({ MOAT_CONFIG: file }),
      stdio: ['ignore', 'pipe', 'pipe'],
      // its own process group, as in a terminal: Ctrl-C signals the whole group
      detached: true,
    });
    const lines: string[] = [];
    readline.createInterface({ input: child.stdout }).on('line', (l) => lines.push(l));
    readline.createInterface({ input: child.stderr }).on('line', (l) => lines.push(l));
    try {
      // generous: in the whole suite on two cores five services and two daemons start beside other tests
      await waitFor(
        () => lines.filter((l) => l.includes('"msg":"listening"')).length === 5 || undefined,
        40_000,
        'five services listening',
      ).catch((err: Error) => {
        // what the launcher printed says which service did not come up, and why
        throw new Error(`${err.message}; the launcher printed:\n${lines.slice(-60).join('\n')}`);
      });
      for (const name of ['screen', 'greylist', 'filter', 'quarantine', 'delivery']) {
        expect(
          lines.some((l) => l.startsWith(name.padEnd(10) + '| ') && l.includes('"msg":"listening"')),
        ).toBe(true);
      }
      const r = await swaks([
        '--server',
        `127.0.0.1:${screen}`,
        '--from',
        'a@remote.test',
        '--to',
        'user@example.test',
      ]);
      expect(r.exitCode, r.output).toBe(0);
      await waitFor(
        () => maildirMessages(path.join(dataDir, 'mail'), 'user@example.test').length === 1 || undefined,
        5000,
        'delivery',
      );
      const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
      // Ctrl-C: SIGINT to the terminal's process group; each service must still stop gracefully, once
      process.kill(-child.pid!, 'SIGINT');
      expect(await exited).toBe(0);
      expect(lines.filter((l) => l.includes('"msg":"stopped"')).length).toBe(5);
      expect(lines.some((l) => l.includes('second signal'))).toBe(false);
    } finally {
      // the whole group: a launcher killed alone would leave its services and managed daemons behind
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }, 90_000);
});

describe('a service on the command line', () => {
  it('refuses to start on a bad setting, naming the key and the variable, with exit code 78', async () => {
    const { file } = await configFile();
    const r = spawnSync(process.execPath, [path.join(root, 'apps/filter/dist/main.js')], {
      env: cleanEnv({ MOAT_CONFIG: file, MOAT_FILTER_NEXT_TIMEOUT: 'soon' }),
      encoding: 'utf8',
      timeout: 10_000,
    });
    expect(r.status).toBe(78);
    expect(r.stderr).toContain(
      'filter.nextTimeout: expected a duration like 300s, 5m or 1d, got "soon" (from MOAT_FILTER_NEXT_TIMEOUT)',
    );
  });

  it('refuses managed scanners outside the launcher as a configuration error (78: no restart loop)', async () => {
    const { file } = await configFile();
    const r = spawnSync(process.execPath, [path.join(root, 'apps/filter/dist/main.js')], {
      env: cleanEnv({ MOAT_CONFIG: file, MOAT_FILTER_CLAMD: 'managed', MOAT_FILTER_SPAMD: '127.0.0.1:1' }),
      encoding: 'utf8',
      timeout: 10_000,
    });
    expect(r.status).toBe(78);
    expect(r.stderr).toContain('filter.clamd: "managed" is only for npm start');
  });

  it('prints the effective configuration with --print-config', async () => {
    const { file } = await configFile();
    const r = spawnSync(process.execPath, [path.join(root, 'apps/greylist/dist/main.js'), '--print-config'], {
      env: cleanEnv({ MOAT_CONFIG: file, MOAT_GREYLIST_MESSAGE_SIZE_LIMIT: '10MB' }),
      encoding: 'utf8',
      timeout: 10_000,
    });
    expect(r.status).toBe(0);
    const printed = YAML.parse(r.stdout);
    expect(printed.greylist.messageSizeLimit).toBe(10 * 1024 * 1024);
    expect(printed.greylist.nextTimeout).toBe('100s');
    expect(printed.hostname).toBe('mx.example.test');
  });
});
