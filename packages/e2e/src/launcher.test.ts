/**
 * npm start's launcher and the services' command line: the whole chain under the launcher carries a
 * message and stops cleanly on SIGTERM; a bad setting stops a service before it listens, naming the
 * key (and the variable it came from); --print-config prints the effective values with secrets masked.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import readline from 'node:readline';
import YAML from 'yaml';
import { describe, expect, it } from 'vitest';
import {
  freePort,
  maildirMessages,
  message,
  repoRoot,
  SmtpClient,
  swaks,
  tmpDir,
  waitFor,
} from '@moat/testkit';

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

interface Launcher {
  child: ChildProcess;
  lines: string[];
  exited: Promise<number | null>;
}

/** Starts the launcher in its own process group, as in a terminal (Ctrl-C signals the whole group). */
function spawnLauncher(file: string, dataDir: string, extra: Record<string, string> = {}): Launcher {
  const child = spawn(process.execPath, [path.join(root, 'packages/launcher/dist/main.js')], {
    cwd: dataDir,
    env: cleanEnv({ MOAT_CONFIG: file, ...extra }),
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  const lines: string[] = [];
  readline.createInterface({ input: child.stdout }).on('line', (l) => lines.push(l));
  readline.createInterface({ input: child.stderr }).on('line', (l) => lines.push(l));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return { child, lines, exited };
}

/** Waits until the five services listen. */
async function fiveListening({ lines }: Launcher): Promise<void> {
  // generous: in the whole suite on two cores five services and two daemons start beside other tests
  await waitFor(
    () => lines.filter((l) => l.includes('"msg":"listening"')).length === 5 || undefined,
    40_000,
    'five services listening',
  ).catch((err: Error) => {
    // what the launcher printed says which service did not come up, and why
    throw new Error(`${err.message}; the launcher printed:\n${lines.slice(-60).join('\n')}`);
  });
}

/** One message from a@remote.test to user@example.test through screen's port, with swaks. */
function sendOne(screen: number): ReturnType<typeof swaks> {
  return swaks(['--server', `127.0.0.1:${screen}`, '--from', 'a@remote.test', '--to', 'user@example.test']);
}

/** Processes (services, managed daemons) whose command line or environment names dataDir. */
function processesUsing(dataDir: string): number[] {
  const found: number[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
      if (stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z')) continue;
      const text =
        fs.readFileSync(`/proc/${entry}/cmdline`, 'latin1') +
        fs.readFileSync(`/proc/${entry}/environ`, 'latin1');
      if (text.includes(dataDir)) found.push(Number(entry));
    } catch {
      // gone, or not ours to read
    }
  }
  return found;
}

/** A service's process (node apps/<name>/dist/main.js), while it exists. */
function isService(pid: number): boolean {
  try {
    return /apps\/\w+\/dist\/main\.js/.test(fs.readFileSync(`/proc/${pid}/cmdline`, 'latin1'));
  } catch {
    return false;
  }
}

/** Kills the launcher's group and anything else still naming dataDir (a failed test leaves nothing). */
function cleanUp(launcher: Launcher | undefined, dataDir: string): void {
  for (const pid of [...(launcher?.child.pid ? [-launcher.child.pid] : []), ...processesUsing(dataDir)]) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
}

describe('the launcher (npm start)', () => {
  it('runs the five services, carries a message into the Maildir, and stops them gracefully on Ctrl-C', async () => {
    const { file, dataDir, screen } = await configFile();
    const launcher = spawnLauncher(file, dataDir);
    const { child, lines } = launcher;
    try {
      await fiveListening(launcher);
      for (const name of ['screen', 'greylist', 'filter', 'quarantine', 'delivery']) {
        expect(
          lines.some((l) => l.startsWith(name.padEnd(10) + '| ') && l.includes('"msg":"listening"')),
        ).toBe(true);
      }
      const r = await sendOne(screen);
      expect(r.exitCode, r.output).toBe(0);
      await waitFor(
        () => maildirMessages(path.join(dataDir, 'mail'), 'user@example.test').length === 1 || undefined,
        5000,
        'delivery',
      );
      // Ctrl-C: SIGINT to the terminal's process group; each service must still stop gracefully, once
      process.kill(-child.pid!, 'SIGINT');
      expect(await launcher.exited).toBe(0);
      expect(lines.filter((l) => l.includes('"msg":"stopped"')).length).toBe(5);
      expect(lines.some((l) => l.includes('second signal'))).toBe(false);
    } finally {
      // a launcher killed alone would leave its services and managed daemons behind
      cleanUp(launcher, dataDir);
    }
  }, 90_000);

  it('starts the chain from its back: the first client screen accepts is greeted 220, not 421', async () => {
    const { file, dataDir, screen } = await configFile();
    const launcher = spawnLauncher(file, dataDir);
    try {
      // the very first connection screen accepts
      const first = await waitFor(
        () => SmtpClient.connect(screen).catch(() => undefined),
        60_000,
        'screen to accept a connection',
      );
      expect((await first.read(20_000)).text).toMatch(/^220 /);
      expect((await first.cmd('EHLO client.remote.test')).code).toBe(250);
      await first.quit();
      await fiveListening(launcher);
      const listening = launcher.lines
        .filter((l) => l.includes('"msg":"listening"'))
        .map((l) => l.slice(0, l.indexOf('|')).trim());
      expect(listening).toEqual(['delivery', 'quarantine', 'filter', 'greylist', 'screen']);
      process.kill(launcher.child.pid!, 'SIGTERM');
      expect(await launcher.exited).toBe(0);
    } catch (err) {
      throw new Error(
        `${(err as Error).message}; the launcher printed:\n${launcher.lines.slice(-40).join('\n')}`,
      );
    } finally {
      cleanUp(launcher, dataDir);
    }
  }, 90_000);

  it('stops front to back: a transaction in flight at SIGTERM is delivered, idle sessions get 421', async () => {
    const { file, dataDir, screen } = await configFile();
    let launcher: Launcher | undefined;
    try {
      // spliced sessions: screen stays a byte pipe in front of greylist
      launcher = spawnLauncher(file, dataDir, { MOAT_SCREEN_HANDOVER: 'false' });
      await fiveListening(launcher);
      const busy = await SmtpClient.connect(screen);
      expect((await busy.read()).code).toBe(220);
      expect((await busy.cmd('EHLO client.remote.test')).code).toBe(250);
      expect((await busy.cmd('MAIL FROM:<a@remote.test>')).code).toBe(250);
      expect((await busy.cmd('RCPT TO:<user@example.test>')).code).toBe(250);
      expect((await busy.cmd('DATA')).code).toBe(354);
      const text = message({ subject: 'in flight' });
      const half = text.indexOf('\r\n\r\n');
      busy.write(text.slice(0, half));
      const idle = await SmtpClient.connect(screen);
      expect((await idle.read()).code).toBe(220);
      expect((await idle.cmd('EHLO idle.remote.test')).code).toBe(250);

      process.kill(launcher.child.pid!, 'SIGTERM');
      // long enough for every hop behind screen to be gone, had they all been stopped at once
      await new Promise((r) => setTimeout(r, 1000));
      busy.write(text.slice(half) + '\r\n.\r\n');
      const final = await busy.read(40_000);
      expect(final.text).toMatch(/^250 /);
      expect((await idle.read(40_000)).code).toBe(421);
      expect(await launcher.exited).toBe(0);
      expect(maildirMessages(path.join(dataDir, 'mail'), 'user@example.test')).toHaveLength(1);
      expect(launcher.lines.filter((l) => l.includes('"msg":"stopped"')).length).toBe(5);
      expect(processesUsing(dataDir)).toEqual([]);
    } catch (err) {
      throw new Error(
        `${(err as Error).message}; the launcher printed:\n${launcher?.lines.slice(-40).join('\n')}`,
      );
    } finally {
      cleanUp(launcher, dataDir);
    }
  }, 120_000);

  it('stops everything on SIGHUP (the terminal closed or the SSH session dropped)', async () => {
    const { file, dataDir } = await configFile();
    const launcher = spawnLauncher(file, dataDir);
    try {
      await fiveListening(launcher);
      // the launcher, five services, clamd, spamd (and spamd's children)
      expect(processesUsing(dataDir).length).toBeGreaterThanOrEqual(8);
      process.kill(launcher.child.pid!, 'SIGHUP');
      expect(await launcher.exited).toBe(0);
      expect(launcher.lines.filter((l) => l.includes('"msg":"stopped"')).length).toBe(5);
      await waitFor(() => processesUsing(dataDir).length === 0 || undefined, 5000, 'nothing left running');
    } finally {
      cleanUp(launcher, dataDir);
    }
  }, 90_000);

  it('a stop while the managed daemons start stops them once they are up', async () => {
    const { file, dataDir } = await configFile();
    const launcher = spawnLauncher(file, dataDir);
    try {
      // clamd or spamd spawned, not yet answering
      await waitFor(
        () => processesUsing(dataDir).some((pid) => pid !== launcher.child.pid) || undefined,
        20_000,
        'a daemon starting',
      );
      expect(launcher.lines.some((l) => l.startsWith('moat: managed '))).toBe(false);
      process.kill(launcher.child.pid!, 'SIGHUP');
      expect(await launcher.exited).toBe(0);
      expect(launcher.lines.some((l) => l.includes('"msg":"listening"'))).toBe(false);
      await waitFor(() => processesUsing(dataDir).length === 0 || undefined, 5000, 'nothing left running');
    } finally {
      cleanUp(launcher, dataDir);
    }
  }, 90_000);

  it('after kill -9 of the launcher its services stop, and the next launcher stops its clamd and spamd', async () => {
    const { file, dataDir } = await configFile();
    const first = spawnLauncher(file, dataDir);
    let second: Launcher | undefined;
    try {
      await fiveListening(first);
      const daemons = first.lines
        .map((l) => /^moat: managed \w+ on \S+ \(pid (\d+)\)/.exec(l)?.[1])
        .filter((pid) => pid !== undefined)
        .map(Number);
      expect(daemons).toHaveLength(2);
      process.kill(first.child.pid!, 'SIGKILL');
      await first.exited;
      // the five services notice on their own; only the two daemons (and spamd's children) are left
      await waitFor(
        () => processesUsing(dataDir).every((pid) => !isService(pid)) || undefined,
        10_000,
        'the services to stop',
      );
      expect(daemons.every((pid) => processesUsing(dataDir).includes(pid))).toBe(true);
      second = spawnLauncher(file, dataDir);
      await fiveListening(second);
      expect(second.lines.filter((l) => l.includes('left running by launcher')).length).toBe(2);
      expect(daemons.some((pid) => processesUsing(dataDir).includes(pid))).toBe(false);
      process.kill(second.child.pid!, 'SIGTERM');
      expect(await second.exited).toBe(0);
      await waitFor(() => processesUsing(dataDir).length === 0 || undefined, 5000, 'nothing left running');
    } finally {
      cleanUp(first, dataDir);
      cleanUp(second, dataDir);
    }
  }, 120_000);

  it('restarts a managed clamd killed with -9 on its address, so mail is delivered again', async () => {
    const { file, dataDir, screen } = await configFile();
    const launcher = spawnLauncher(file, dataDir);
    const { lines } = launcher;
    try {
      await fiveListening(launcher);
      const started = /^moat: managed clamd on (\S+) \(pid (\d+)\)$/;
      const [, address, pid] = lines.map((l) => started.exec(l)).find((m) => m !== null)!;
      process.kill(Number(pid), 'SIGKILL');
      await waitFor(
        () =>
          lines.includes(`moat: managed clamd (pid ${pid}) exited (SIGKILL); restarting in 1s`) || undefined,
        10_000,
        'the exit to be logged',
      );
      // on the same address, a new pid, which the record for the next launcher names
      const again = await waitFor(
        () => lines.map((l) => started.exec(l)).find((m) => m !== null && m[2] !== pid) ?? undefined,
        30_000,
        'clamd to start again',
      );
      expect(again[1]).toBe(address);
      const record = JSON.parse(fs.readFileSync(path.join(dataDir, 'daemons/managed.json'), 'utf8')) as {
        daemons: { name: string; pid: number }[];
      };
      expect(record.daemons.find((d) => d.name === 'clamd')?.pid).toBe(Number(again[2]));
      // filter reaches it again without a restart of its own
      await waitFor(
        async () => (await sendOne(screen)).exitCode === 0 || undefined,
        20_000,
        'a message delivered through the chain',
      );
      expect(maildirMessages(path.join(dataDir, 'mail'), 'user@example.test')).toHaveLength(1);
      expect(lines.some((l) => l.startsWith('filter    | ') && l.includes('"msg":"stopped"'))).toBe(false);
      process.kill(launcher.child.pid!, 'SIGTERM');
      expect(await launcher.exited).toBe(0);
      await waitFor(() => processesUsing(dataDir).length === 0 || undefined, 5000, 'nothing left running');
    } catch (err) {
      throw new Error(`${(err as Error).message}; the launcher printed:\n${lines.slice(-40).join('\n')}`);
    } finally {
      cleanUp(launcher, dataDir);
    }
  }, 120_000);

  it('a second launcher on the same dataDir stops at once, naming the running one', async () => {
    const { file, dataDir } = await configFile();
    const first = spawnLauncher(file, dataDir);
    let second: Launcher | undefined;
    try {
      await fiveListening(first);
      second = spawnLauncher(file, dataDir);
      expect(await second.exited).toBe(1);
      expect(second.lines).toContain(
        `moat: another launcher (pid ${first.child.pid}) is running on ${dataDir}; stop it first (kill ${first.child.pid})`,
      );
      expect(second.lines.some((l) => l.includes('install them'))).toBe(false);
      // the first one untouched: still up, nothing restarted
      expect(first.child.exitCode).toBe(null);
      expect(first.lines.some((l) => l.includes('restarting'))).toBe(false);
      process.kill(first.child.pid!, 'SIGTERM');
      expect(await first.exited).toBe(0);
    } finally {
      cleanUp(first, dataDir);
      cleanUp(second, dataDir);
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

  it('says so when its address is already in use', async () => {
    const { file } = await configFile();
    const taken = net.createServer();
    await new Promise<void>((r) => taken.listen(0, '127.0.0.1', r));
    const port = (taken.address() as net.AddressInfo).port;
    try {
      const r = spawnSync(process.execPath, [path.join(root, 'apps/delivery/dist/main.js')], {
        env: cleanEnv({ MOAT_CONFIG: file, MOAT_DELIVERY_LISTEN: `127.0.0.1:${port}` }),
        encoding: 'utf8',
        timeout: 10_000,
      });
      expect(r.status).toBe(1);
      expect(r.stderr).toContain(`delivery: 127.0.0.1:${port} is already in use`);
    } finally {
      taken.close();
    }
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
