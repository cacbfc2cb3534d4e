/**
 * supervisor: runs each service as its own child process (`node apps/<name>/dist/main.js`, the same
 * command as in the container), prefixes its log lines with the service name, restarts it when it
 * crashes (backoff 1 s doubling to 30 s, reset after a minute up), and stops all of them on request:
 * SIGTERM to each (they finish or 421 their open sessions), SIGKILL after the grace period.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import path from 'node:path';
import readline from 'node:readline';
import { serviceEnv } from '@moat/runtime';

export interface SupervisedService {
  name: string;
  child: ChildProcess | undefined;
  restarts: number;
}

export interface SupervisorOptions {
  root: string;
  services: readonly string[];
  env: NodeJS.ProcessEnv;
  /** Where prefixed lines go (default stdout). */
  out?: (line: string) => void;
  graceMs?: number;
}

export class Supervisor {
  readonly services: SupervisedService[];
  #stopping = false;
  readonly #out: (line: string) => void;

  constructor(readonly o: SupervisorOptions) {
    this.services = o.services.map((name) => ({ name, child: undefined, restarts: 0 }));
    this.#out = o.out ?? ((line) => process.stdout.write(line + '\n'));
  }

  start(): void {
    // children live in their own process groups: if the launcher dies unexpectedly, do not leave them behind
    process.once('exit', () => {
      for (const s of this.services) s.child?.kill('SIGTERM');
    });
    for (const s of this.services) this.#spawn(s, 1000);
  }

  #spawn(s: SupervisedService, backoffMs: number): void {
    const pad = s.name.padEnd(10);
    const child = spawn(process.execPath, [path.join(this.o.root, 'apps', s.name, 'dist', 'main.js')], {
      cwd: process.cwd(),
      env: serviceEnv(this.o.env, s.name),
      stdio: ['ignore', 'pipe', 'pipe'],
      // its own process group: Ctrl-C in the terminal reaches the launcher only, which stops each
      // service once (a service given two signals stops at once instead of finishing its sessions)
      detached: true,
    });
    s.child = child;
    const started = Date.now();
    readline.createInterface({ input: child.stdout! }).on('line', (l) => this.#out(`${pad}| ${l}`));
    readline.createInterface({ input: child.stderr! }).on('line', (l) => this.#out(`${pad}| ${l}`));
    child.on('exit', (code, signal) => {
      s.child = undefined;
      if (this.#stopping) return;
      if (code === 78) {
        this.#out(`${pad}| configuration error: not restarting; fix moat.yaml and start again`);
        return;
      }
      const upMs = Date.now() - started;
      const next = upMs > 60_000 ? 1000 : Math.min(backoffMs * 2, 30_000);
      s.restarts++;
      this.#out(`${pad}| exited (${signal ?? code}); restarting in ${backoffMs / 1000}s`);
      setTimeout(() => !this.#stopping && this.#spawn(s, next), backoffMs).unref();
    });
  }

  async stop(): Promise<void> {
    this.#stopping = true;
    const grace = this.o.graceMs ?? 35_000;
    await Promise.all(
      // front door first, so no new mail comes in while the rest finishes
      [...this.services].reverse().map(async (s) => {
        const child = s.child;
        if (!child || child.exitCode !== null) return;
        const exited = new Promise<void>((r) => child.once('exit', () => r()));
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), grace);
        await exited;
        clearTimeout(timer);
      }),
    );
  }
}
