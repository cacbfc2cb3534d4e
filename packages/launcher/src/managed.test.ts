/**
 * KeptDaemon with stand-in handles: an exit is reported and followed by a restart after the backoff
 * (doubling while the restarts fail), and nothing is restarted once it is retired.
 */
import type { DaemonExit, DaemonHandle } from '@moat/daemons';
import { describe, expect, it } from 'vitest';
import { KeptDaemon } from './managed.js';

interface Fake extends DaemonHandle {
  die(exit: DaemonExit): void;
  stopped: boolean;
}

let nextPid = 100;
function fake(): Fake {
  let die!: (exit: DaemonExit) => void;
  const exited = new Promise<DaemonExit>((r) => (die = r));
  const h: Fake = {
    name: 'clamd',
    address: '127.0.0.1:47001',
    port: 47001,
    pid: nextPid++,
    logFile: '/dev/null',
    readyMs: 1,
    exited,
    die,
    stopped: false,
    stop: () => {
      h.stopped = true;
      return Promise.resolve();
    },
  };
  return h;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('KeptDaemon', () => {
  it('restarts a daemon that exits, after the backoff, doubling while its starts fail', async () => {
    const first = fake();
    const lines: string[] = [];
    const started: Fake[] = [];
    let failures = 2;
    let restarts = 0;
    const kept = new KeptDaemon(first, {
      backoffMs: 20,
      say: (l) => lines.push(l),
      onRestart: () => restarts++,
      restart: () => {
        if (failures-- > 0) return Promise.reject(new Error('port in use'));
        const h = fake();
        started.push(h);
        return Promise.resolve(h);
      },
    });
    first.die({ code: null, signal: 'SIGKILL' });
    // 20 + 40 + 80 ms
    for (const end = Date.now() + 5000; started.length === 0 && Date.now() < end;) await sleep(10);
    expect(lines[0]).toBe(`managed clamd (pid ${first.pid}) exited (SIGKILL); restarting in 0.02s`);
    expect(lines.filter((l) => l.includes('did not start again'))).toHaveLength(2);
    expect(lines.at(-1)).toBe(`managed clamd on 127.0.0.1:47001 (pid ${started[0]!.pid})`);
    expect(first.stopped).toBe(true); // what it left in its group cleared before the restart
    expect(kept.pid).toBe(started[0]!.pid);
    expect(restarts).toBe(1);
    await kept.stop();
    expect(started[0]!.stopped).toBe(true);
  });

  it('restarts nothing once retired (the launcher is stopping)', async () => {
    const first = fake();
    const lines: string[] = [];
    let restarts = 0;
    const kept = new KeptDaemon(first, {
      backoffMs: 10,
      say: (l) => lines.push(l),
      restart: () => {
        restarts++;
        return Promise.resolve(fake());
      },
    });
    kept.retire();
    first.die({ code: 1, signal: null });
    await sleep(50);
    expect(restarts).toBe(0);
    expect(lines).toEqual([]);
  });
});
