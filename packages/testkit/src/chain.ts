/**
 * chain: runs Moat services as real processes (`node apps/<name>/dist/main.js`, the container's command)
 * on free loopback ports with a generated moat.yaml, collects their JSON log lines, and stops them.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import YAML from 'yaml';
import { serviceEnv } from '@moat/runtime';
import { type DaemonHandle, ENV, startClamd, startSpamd } from '@moat/daemons';
import { maildirMessages } from './maildir.js';
import { freePort, repoRoot, tmpDir, waitFor } from './net.js';

export const SERVICES = ['delivery', 'quarantine', 'filter', 'greylist', 'screen'] as const;
export type ServiceName = (typeof SERVICES)[number];

export interface LogLine {
  service: string;
  level: string;
  msg: string;
  [key: string]: unknown;
}

export interface Ports {
  screen: number;
  greylist: number;
  filter: number;
  delivery: number;
  quarantine: number;
  http: number;
}

type Json = { [key: string]: unknown };

function merge(a: Json, b: Json): Json {
  const out: Json = { ...a };
  for (const [k, v] of Object.entries(b)) {
    const cur = out[k];
    out[k] =
      v && typeof v === 'object' && !Array.isArray(v) && cur && typeof cur === 'object' && !Array.isArray(cur)
        ? merge(cur as Json, v as Json)
        : v;
  }
  return out;
}

export class ServiceProcess {
  readonly logs: LogLine[] = [];
  readonly stderr: string[] = [];
  exited: number | null | undefined;
  readonly #lines: readline.Interface;
  constructor(
    readonly name: ServiceName,
    readonly child: ChildProcess,
  ) {
    this.#lines = readline.createInterface({ input: child.stdout! });
    this.#lines.on('line', (line) => {
      try {
        this.logs.push(JSON.parse(line) as LogLine);
      } catch {
        this.stderr.push(line);
      }
    });
    readline.createInterface({ input: child.stderr! }).on('line', (line) => this.stderr.push(line));
    child.on('exit', (code) => {
      this.exited = code;
    });
  }

  /**
   * Stops collecting log lines: from now on stdout is read and dropped unparsed (a benchmark's load
   * generator should not spend its CPU on the service's log, as Postgrey's goes to /dev/null).
   */
  dropLogs(): void {
    this.#lines.close();
    this.child.stdout!.on('data', () => undefined);
    this.child.stdout!.resume();
  }

  find(pred: (l: LogLine) => boolean): LogLine | undefined {
    return this.logs.find(pred);
  }

  waitForLog(pred: (l: LogLine) => boolean, timeoutMs = 5000, what = 'log line'): Promise<LogLine> {
    return waitFor(() => this.find(pred), timeoutMs, `${this.name}: ${what}`);
  }

  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    if (this.exited !== undefined) return;
    const done = new Promise<void>((r) => this.child.once('exit', () => r()));
    this.child.kill(signal);
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 10_000);
    await done;
    clearTimeout(timer);
  }
}

export interface ChainOptions {
  /** Services to start (default: all five). */
  services?: readonly ServiceName[];
  /** Extra moat.yaml content, merged over the generated one. */
  config?: Json;
  env?: NodeJS.ProcessEnv;
  dataDir?: string;
  /** Extra node options for every service (e.g. --cpu-prof). */
  nodeArgs?: string[];
}

export class Chain {
  readonly processes = new Map<ServiceName, ServiceProcess>();
  private constructor(
    readonly ports: Ports,
    readonly dataDir: string,
    readonly configFile: string,
    readonly config: Json,
    readonly env: NodeJS.ProcessEnv,
    readonly nodeArgs: string[] = [],
    /** clamd/spamd started for this chain (when MOAT_TEST_CLAMD/MOAT_TEST_SPAMD were not given). */
    readonly daemons: DaemonHandle[] = [],
    /** dataDir was made by create(), not given: stop() removes it. */
    readonly ownDataDir = false,
  ) {}

  get maildir(): string {
    return path.join(this.dataDir, 'mail');
  }

  service(name: ServiceName): ServiceProcess {
    const p = this.processes.get(name);
    if (!p) throw new Error(`${name} is not running`);
    return p;
  }

  static async create(o: ChainOptions = {}): Promise<Chain> {
    const dataDir = o.dataDir ?? tmpDir('moat-chain-');
    const ports: Ports = {
      screen: await freePort(),
      greylist: await freePort(),
      filter: await freePort(),
      delivery: await freePort(),
      quarantine: await freePort(),
      http: await freePort(),
    };
    // filter scans with the real daemons: those of `npm test` (MOAT_TEST_*), else its own
    const services = o.services ?? SERVICES;
    const daemons: DaemonHandle[] = [];
    let clamd = process.env[ENV.clamd];
    let spamd = process.env[ENV.spamd];
    if (services.includes('filter') && (!clamd || !spamd)) {
      // as root the daemons drop privileges: their folder must be traversable, which dataDir is not
      const stateDir = path.join(os.tmpdir(), `moat-chain-daemons-${process.pid}-${ports.filter}`);
      try {
        const [c, s] = await Promise.all([
          clamd ? undefined : startClamd({ stateDir }),
          spamd ? undefined : startSpamd({ stateDir }),
        ]);
        if (c) daemons.push(c);
        if (s) daemons.push(s);
        clamd ??= c?.address;
        spamd ??= s?.address;
      } catch (err) {
        await Promise.all(daemons.map((d) => d.stop()));
        throw err;
      }
    }
    const base: Json = {
      hostname: 'mx.example.test',
      domains: ['example.test'],
      dataDir,
      log: { level: 'info' },
      screen: { listen: `127.0.0.1:${ports.screen}` },
      greylist: { listen: `127.0.0.1:${ports.greylist}`, nextTimeout: '10s', enabled: false },
      filter: {
        listen: `127.0.0.1:${ports.filter}`,
        nextTimeout: '10s',
        clamd: clamd ?? '127.0.0.1:3310',
        spamd: spamd ?? '127.0.0.1:783',
      },
      delivery: { listen: `127.0.0.1:${ports.delivery}` },
      quarantine: { listen: `127.0.0.1:${ports.quarantine}`, http: `127.0.0.1:${ports.http}` },
    };
    const config = merge(base, o.config ?? {});
    const configFile = path.join(dataDir, 'moat.yaml');
    fs.writeFileSync(configFile, YAML.stringify(config));
    const env: NodeJS.ProcessEnv = { ...process.env };
    // the test's configuration alone counts: no MOAT_* from the developer's shell
    for (const k of Object.keys(env)) if (k.startsWith('MOAT_') && !k.startsWith('MOAT_TEST_')) delete env[k];
    Object.assign(env, o.env, { MOAT_CONFIG: configFile });
    const chain = new Chain(ports, dataDir, configFile, config, env, o.nodeArgs, daemons, !o.dataDir);
    try {
      for (const name of services) await chain.start(name);
    } catch (err) {
      await chain.stop();
      throw err;
    }
    return chain;
  }

  /** Waits until `address` has at least `count` messages in the Maildir; returns them, oldest first. */
  waitForMail(address: string, count = 1, timeoutMs = 5000): Promise<{ file: string; text: string }[]> {
    return waitFor(
      () => {
        const m = maildirMessages(this.maildir, address);
        return m.length >= count ? m : undefined;
      },
      timeoutMs,
      `${count} message(s) for ${address} in the Maildir`,
    );
  }

  /** Starts (or restarts) one service and waits until it listens. */
  async start(name: ServiceName): Promise<ServiceProcess> {
    const root = repoRoot();
    const child = spawn(
      process.execPath,
      [...this.nodeArgs, path.join(root, 'apps', name, 'dist', 'main.js')],
      {
        cwd: this.dataDir,
        env: serviceEnv(this.env, name),
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    const proc = new ServiceProcess(name, child);
    this.processes.set(name, proc);
    try {
      await waitFor(
        () => {
          if (proc.exited !== undefined)
            throw new Error(`${name} exited with ${proc.exited}: ${proc.stderr.join('\n')}`);
          return proc.find((l) => l.msg === 'listening');
        },
        15_000,
        `${name} to listen`,
      );
    } catch (err) {
      await proc.stop('SIGKILL');
      throw err;
    }
    return proc;
  }

  /**
   * Stops every service and the daemons started for the chain, then removes the data folder the chain
   * made for itself (a bench run leaves hundreds of megabytes of Maildir in it); one passed in
   * `dataDir` is the caller's. MOAT_TEST_KEEP_DATA=1 keeps it, to look at after a failure.
   */
  async stop(): Promise<void> {
    await Promise.all([...this.processes.values()].map((p) => p.stop()));
    await Promise.all(this.daemons.splice(0).map((d) => d.stop()));
    if (this.ownDataDir && !process.env.MOAT_TEST_KEEP_DATA)
      fs.rmSync(this.dataDir, { recursive: true, force: true });
  }
}
