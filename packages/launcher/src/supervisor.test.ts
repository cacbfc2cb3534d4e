/**
 * The supervisor with stand-in services: small Node scripts under a temporary root that write what
 * happens to them (started, ready, SIGTERM, exited) to one shared journal, so the order is exact, and
 * report ready (ready()) as a service does once it listens.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { READY_MESSAGE } from '@moat/runtime';
import { afterEach, describe, expect, it } from 'vitest';
import { Supervisor, type SupervisorOptions } from './supervisor.js';

const SERVICES = ['delivery', 'quarantine', 'filter', 'greylist', 'screen'];

/** Temporary roots, removed after each test. */
const roots: string[] = [];

/**
 * A root with apps/<name>/dist/main.js for each name: script(name) is its body (CommonJS), with
 * note(what) to write to the journal and ready() to report ready to the supervisor.
 */
function fakeRoot(script: (name: string) => string): { root: string; journal: string } {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'moat-supervisor-'));
  roots.push(root);
  const journal = path.join(root, 'journal');
  fs.writeFileSync(journal, '');
  for (const name of SERVICES) {
    const dir = path.join(root, 'apps', name, 'dist');
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(
      path.join(dir, 'main.js'),
      `const fs = require('node:fs');\n` +
        `const note = (what) => fs.appendFileSync(${JSON.stringify(journal)}, ${JSON.stringify(name)} + ' ' + what + '\\n');\n` +
        `const ready = () => process.send(${JSON.stringify(READY_MESSAGE)});\n` +
        script(name),
    );
  }
  return { root, journal };
}

const entries = (journal: string) => fs.readFileSync(journal, 'utf8').trim().split('\n').filter(Boolean);

async function until(check: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A service that takes 150 ms to finish its sessions after SIGTERM. */
const SLOW_STOP = `
note('up');
ready();
process.on('SIGTERM', () => { note('term'); setTimeout(() => { note('exit'); process.exit(0); }, 150); });
setInterval(() => {}, 1000);
`;

let running: Supervisor | undefined;

/** A supervisor of the five stand-ins under root (killed after the test), its lines dropped unless out is given. */
function supervise(root: string, more: Partial<SupervisorOptions> = {}): Supervisor {
  return (running = new Supervisor({ root, services: SERVICES, env: process.env, out: () => {}, ...more }));
}
afterEach(() => {
  for (const root of roots.splice(0)) fs.rmSync(root, { recursive: true, force: true });
  // by pid: a failed test leaves no stand-in behind
  for (const s of running?.services ?? []) s.child?.kill('SIGKILL');
  running = undefined;
});

describe('Supervisor.start', () => {
  it('starts from the back of the chain, each only after the one before reported ready', async () => {
    // each takes 100 ms from its start to listening
    const { root, journal } = fakeRoot(
      () => `
note('up');
setTimeout(() => { note('ready'); ready(); }, 100);
process.on('SIGTERM', () => process.exit(0));
setInterval(() => {}, 1000);
`,
    );
    const sup = supervise(root, { backoffMs: 50 });
    await sup.start();
    expect(entries(journal)).toEqual(SERVICES.flatMap((n) => [`${n} up`, `${n} ready`]));
    // a crash later is restarted at once, waiting for nothing and starting nothing else
    sup.services[2]!.child!.kill('SIGKILL');
    await until(() => entries(journal).length === 12);
    expect(entries(journal).slice(10)).toEqual(['filter up', 'filter ready']);
    await sup.stop();
  });

  it('waits for the restart of one that crashed before it was ready; goes on after the wait for one that never reports', async () => {
    const { root, journal } = fakeRoot(
      (name) => `
const starts = require('node:path').join(__dirname, 'starts');
const first = !fs.existsSync(starts);
fs.writeFileSync(starts, 'x');
note('up');
${name === 'delivery' ? `if (first) { note('crash'); process.exit(1); }` : ''}
${name === 'quarantine' ? '' : 'ready();'}
process.on('SIGTERM', () => process.exit(0));
setInterval(() => {}, 1000);
`,
    );
    const lines: string[] = [];
    const sup = supervise(root, { backoffMs: 50, readyTimeoutMs: 300, out: (l) => lines.push(l) });
    const started = Date.now();
    await sup.start();
    expect(entries(journal)).toEqual([
      'delivery up',
      'delivery crash',
      'delivery up',
      'quarantine up',
      'filter up',
      'greylist up',
      'screen up',
    ]);
    expect(Date.now() - started).toBeGreaterThanOrEqual(300);
    expect(lines).toContain('quarantine| not ready after 0.3s; starting the next service anyway');
    await sup.stop();
  });

  it('a stop while they start starts no more of them', async () => {
    const { root, journal } = fakeRoot(
      (name) =>
        `note('up'); ${name === 'filter' ? '' : 'ready();'} process.on('SIGTERM', () => process.exit(0)); setInterval(() => {}, 1000);`,
    );
    const sup = supervise(root);
    const starting = sup.start(); // filter never reports: the default wait is 30 s
    await until(() => entries(journal).includes('filter up'));
    await sup.stop();
    await starting;
    expect(entries(journal)).toEqual(['delivery up', 'quarantine up', 'filter up']);
  });
});

describe('Supervisor.stop', () => {
  it('stops from the front door back, each service gone before the next gets SIGTERM', async () => {
    const { root, journal } = fakeRoot(() => SLOW_STOP);
    const sup = (running = new Supervisor({ root, services: SERVICES, env: process.env, out: () => {} }));
    sup.start();
    await until(() => entries(journal).length === 5);
    await sup.stop();
    const stops = entries(journal).filter((l) => !l.endsWith(' up'));
    expect(stops).toEqual(
      ['screen', 'greylist', 'filter', 'quarantine', 'delivery'].flatMap((n) => [`${n} term`, `${n} exit`]),
    );
  });

  it('does not wait for a pass-through service (screen) before stopping the next one, but for its exit', async () => {
    const { root, journal } = fakeRoot((name) =>
      name === 'screen'
        ? `note('up'); ready(); process.on('SIGTERM', () => { note('term'); setTimeout(() => { note('exit'); process.exit(0); }, 600); }); setInterval(() => {}, 1000);`
        : SLOW_STOP,
    );
    const sup = (running = new Supervisor({
      root,
      services: SERVICES,
      env: process.env,
      out: () => {},
      passThrough: ['screen'],
    }));
    sup.start();
    await until(() => entries(journal).length === 5);
    await sup.stop();
    const stops = entries(journal).filter((l) => !l.endsWith(' up'));
    // both signalled one after the other: which handler runs first is up to the two processes
    expect(stops.slice(0, 2).sort()).toEqual(['greylist term', 'screen term']);
    expect(stops.indexOf('greylist term')).toBeLessThan(stops.indexOf('screen exit'));
    expect(stops.indexOf('greylist exit')).toBeLessThan(stops.indexOf('filter term'));
    expect(stops.at(-1)).toBe('delivery exit');
  });

  it('kill() (the second Ctrl-C) ends every service at once, also those still waiting their turn', async () => {
    const { root, journal } = fakeRoot(
      () => `note('up'); ready(); process.on('SIGTERM', () => note('term')); setInterval(() => {}, 1000);`,
    );
    const sup = (running = new Supervisor({ root, services: SERVICES, env: process.env, out: () => {} }));
    sup.start();
    await until(() => entries(journal).length === 5);
    const stopped = sup.stop(); // screen ignores its SIGTERM: the others wait behind it
    await until(() => entries(journal).includes('screen term'));
    const signals = sup.services.map(
      (s) => new Promise((r) => s.child!.once('exit', (_code, signal) => r(signal))),
    );
    sup.kill();
    await stopped;
    expect(await Promise.all(signals)).toEqual(SERVICES.map(() => 'SIGKILL'));
    expect(entries(journal).filter((l) => l.endsWith(' term'))).toEqual(['screen term']);
  });
});

describe('Supervisor restarts', () => {
  it('keeps the launcher alive and restarts every service when all of them crash at once', async () => {
    // the first start of each crashes at once; the second stays up
    const { root, journal } = fakeRoot(
      () => `
const starts = require('node:path').join(__dirname, 'starts');
const first = !fs.existsSync(starts);
fs.writeFileSync(starts, 'x');
note(first ? 'crash' : 'up');
if (first) process.exit(1);
ready();
process.on('SIGTERM', () => process.exit(0));
setInterval(() => {}, 1000);
`,
    );
    // the supervisor alone in a process, as in the launcher: nothing else keeps its event loop alive
    const runner = spawn(
      process.execPath,
      [
        '--input-type=module',
        '-e',
        `import { Supervisor } from ${JSON.stringify(new URL('../dist/supervisor.js', import.meta.url).href)};
         const sup = new Supervisor({ root: ${JSON.stringify(root)}, services: ${JSON.stringify(SERVICES)},
           env: process.env, backoffMs: 50, out: () => {} });
         sup.start();
         process.on('SIGTERM', () => sup.stop().then(() => process.exit(0)));`,
      ],
      { stdio: 'ignore' },
    );
    try {
      await until(() => entries(journal).filter((l) => l.endsWith(' up')).length === 5);
      expect(runner.exitCode).toBe(null);
    } finally {
      const exited = new Promise((r) => runner.once('exit', r));
      runner.kill('SIGTERM');
      await exited;
    }
  });

  it('does not restart a service that exits on a configuration error; reports when none is left', async () => {
    const { root, journal } = fakeRoot(
      (name) =>
        `note('up'); ${name === 'screen' ? 'setTimeout(() => process.exit(78), 300);' : 'process.exit(78);'}`,
    );
    let allFailed = 0;
    const lines: string[] = [];
    const sup = supervise(root, { backoffMs: 50, out: (l) => lines.push(l), onAllFailed: () => allFailed++ });
    sup.start();
    await until(() => sup.services.filter((s) => s.configError).length === 4);
    expect(allFailed).toBe(0); // screen still runs
    await until(() => allFailed === 1);
    await new Promise((r) => setTimeout(r, 200));
    expect(entries(journal)).toHaveLength(5); // started once each
    expect(lines.filter((l) => l.includes('configuration error: not restarting'))).toHaveLength(5);
  });
});
