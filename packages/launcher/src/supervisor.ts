/**
 * supervisor: runs each service as its own child process (`node apps/<name>/dist/main.js`, the same
 * command as in the container), prefixes its log lines with the service name, restarts it when it
 * crashes (backoff 1 s doubling to 30 s, reset after a minute up), and stops them on request from the
 * front of the chain to its back: SIGTERM to one, wait until it has exited (it finishes or 421s its
 * open sessions, SIGKILL after the grace period), then the next, so a hop never loses its next hop
 * while a transaction is still on its way through. A pass-through service (screen, whose spliced
 * sessions are greylist's sessions carried byte for byte) is not waited for: it stops accepting at
 * its SIGTERM, and its open splices end when the next service finishes or 421s them. kill() is the
 * second Ctrl-C: SIGKILL to all at once.
 *
 * They start the other way round, from the back of the chain, one at a time: each after the one
 * before it has reported ready (READY_MESSAGE over the IPC channel: it listens), so screen never
 * accepts a client while greylist is not yet up to take it (421). A service that does not report
 * within readyTimeoutMs is logged and the next one started anyway; one that exits on a configuration
 * error ends the wait at once, one that crashes is restarted as usual and the wait goes on for its
 * restart. Later restarts of a crashed service wait for nothing.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import path from 'node:path';
import readline from 'node:readline';
import { READY_MESSAGE, serviceEnv } from '@moat/runtime';

/** EX_CONFIG: the service refused its configuration; restarting it would only fail again. */
export const CONFIG_ERROR_EXIT = 78;

export interface SupervisedService {
  name: string;
  child: ChildProcess | undefined;
  restarts: number;
  /** Exited with CONFIG_ERROR_EXIT: not restarted. */
  configError: boolean;
  /** The pending restart, if any. */
  timer: NodeJS.Timeout | undefined;
}

export interface SupervisorOptions {
  root: string;
  /** From the back of the chain to its front (the order they start in; they stop in reverse). */
  services: readonly string[];
  env: NodeJS.ProcessEnv;
  /** Where prefixed lines go (default stdout). */
  out?: (line: string) => void;
  /**
   * How long one service may take to stop before it gets SIGKILL. Default 40 s: the listeners' 30 s
   * grace for open sessions (screen's 35 s) and time to close.
   */
  graceMs?: number;
  /**
   * Services that only carry their open sessions to the next one (screen's splices): on stop the next
   * service gets its SIGTERM right after theirs instead of after their exit, since their sessions end
   * when the next service ends them.
   */
  passThrough?: readonly string[];
  /** First restart delay, doubled per crash up to 30 s. Default 1 s. */
  backoffMs?: number;
  /** Called once every service has exited on a configuration error: nothing is left to run. */
  onAllFailed?: () => void;
  /** How long start() waits for one service to report ready before it starts the next. Default 30 s. */
  readyTimeoutMs?: number;
}

export class Supervisor {
  readonly services: SupervisedService[];
  #stopping = false;
  readonly #out: (line: string) => void;
  /** The service start() waits for, and what ends that wait. */
  #waiting: { service: SupervisedService; done: () => void } | undefined;

  constructor(readonly o: SupervisorOptions) {
    this.services = o.services.map((name) => ({
      name,
      child: undefined,
      restarts: 0,
      configError: false,
      timer: undefined,
    }));
    this.#out = o.out ?? ((line) => process.stdout.write(line + '\n'));
  }

  /** Starts the services from the back of the chain, each once the one before reported ready. */
  async start(): Promise<void> {
    // children live in their own process groups: if the launcher dies unexpectedly, do not leave them behind
    process.once('exit', () => {
      for (const s of this.services) s.child?.kill('SIGTERM');
    });
    for (const s of this.services) {
      if (this.#stopping) return;
      this.#spawn(s, this.o.backoffMs ?? 1000);
      await this.#ready(s);
    }
  }

  /** Resolves when s reports ready, exits on a configuration error, the stop begins, or the wait runs out. */
  #ready(s: SupervisedService): Promise<void> {
    const limit = this.o.readyTimeoutMs ?? 30_000;
    return new Promise((resolve) => {
      const waiting = {
        service: s,
        done: () => {
          clearTimeout(timer);
          if (this.#waiting === waiting) this.#waiting = undefined;
          resolve();
        },
      };
      const timer = setTimeout(() => {
        this.#out(`${s.name.padEnd(10)}| not ready after ${limit / 1000}s; starting the next service anyway`);
        waiting.done();
      }, limit);
      this.#waiting = waiting;
    });
  }

  #spawn(s: SupervisedService, backoffMs: number): void {
    s.timer = undefined;
    const pad = s.name.padEnd(10);
    const child = spawn(process.execPath, [path.join(this.o.root, 'apps', s.name, 'dist', 'main.js')], {
      cwd: process.cwd(),
      env: serviceEnv(this.o.env, s.name),
      // the IPC channel carries nothing: its closing tells the service its launcher is gone
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
      // its own process group: Ctrl-C in the terminal reaches the launcher only, which stops each
      // service once (a service given two signals stops at once instead of finishing its sessions)
      detached: true,
    });
    s.child = child;
    const started = Date.now();
    readline.createInterface({ input: child.stdout! }).on('line', (l) => this.#out(`${pad}| ${l}`));
    readline.createInterface({ input: child.stderr! }).on('line', (l) => this.#out(`${pad}| ${l}`));
    child.on('message', (m) => {
      if (m === READY_MESSAGE && this.#waiting?.service === s) this.#waiting.done();
    });
    child.on('exit', (code, signal) => {
      s.child = undefined;
      if (this.#stopping) return;
      if (code === CONFIG_ERROR_EXIT) {
        s.configError = true;
        this.#out(`${pad}| configuration error: not restarting; fix moat.yaml and start again`);
        if (this.#waiting?.service === s) this.#waiting.done();
        if (this.services.every((x) => x.configError)) this.o.onAllFailed?.();
        return;
      }
      const upMs = Date.now() - started;
      const first = this.o.backoffMs ?? 1000;
      const next = upMs > 60_000 ? first : Math.min(backoffMs * 2, 30_000);
      s.restarts++;
      this.#out(`${pad}| exited (${signal ?? code}); restarting in ${backoffMs / 1000}s`);
      // not unref'd: when every service crashed at once, this timer is what keeps the launcher alive
      s.timer = setTimeout(() => !this.#stopping && this.#spawn(s, next), backoffMs);
    });
  }

  /** Stops the services one at a time from the front door back: screen first, delivery last. */
  async stop(): Promise<void> {
    this.#stopping = true;
    this.#waiting?.done(); // the services not started yet stay so
    for (const s of this.services) clearTimeout(s.timer);
    const grace = this.o.graceMs ?? 40_000;
    // front door first, so no new mail comes in while the rest finishes; each next hop stays up
    // until its client has finished (or 421ed) the transactions it was relaying
    const carrying: Promise<void>[] = [];
    for (const s of [...this.services].reverse()) {
      const child = s.child;
      if (!child || child.exitCode !== null || child.signalCode !== null) continue;
      const exited = new Promise<void>((r) => child.once('exit', () => r()));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), grace);
      const done = exited.then(() => clearTimeout(timer));
      if (this.o.passThrough?.includes(s.name)) carrying.push(done);
      else await done;
    }
    await Promise.all(carrying);
  }

  /** A forced stop (the second Ctrl-C): SIGKILL to every service still running, at once. */
  kill(): void {
    this.#stopping = true;
    this.#waiting?.done();
    for (const s of this.services) {
      clearTimeout(s.timer);
      s.child?.kill('SIGKILL');
    }
  }
}
