import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { TurnWriter } from './turn-writer.js';

const turn = () => new Promise<void>((r) => setImmediate(r));

function tmpFile(): { fd: number; file: string } {
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'moat-log-')), 'out');
  return { fd: fs.openSync(file, 'w'), file };
}

/** A `cat` whose stdout nobody reads yet: our end of its stdin fills up and says EAGAIN. */
function stalledReader() {
  const cat = spawn('cat', [], { stdio: ['pipe', 'pipe', 'ignore'] });
  cat.stdout.pause();
  const fd = (cat.stdin as unknown as { _handle: { fd: number } })._handle.fd;
  return { cat, fd };
}

describe('TurnWriter', () => {
  it('writes the lines of one event-loop turn with one write, in order', async () => {
    const { fd, file } = tmpFile();
    const w = new TurnWriter({ fd });
    for (let i = 0; i < 100; i++) w.write(`{"n":${i}}\n`);
    expect(fs.readFileSync(file, 'utf8')).toBe(''); // nothing before the turn ends
    await turn();
    expect(w.writes).toBe(1);
    w.write('{"n":100}\n');
    await turn();
    expect(w.writes).toBe(2);
    const lines = fs.readFileSync(file, 'utf8').trim().split('\n');
    expect(lines).toHaveLength(101);
    expect(lines.map((l) => (JSON.parse(l) as { n: number }).n)).toEqual([...Array(101).keys()]);
  });

  it('keeps lines while the reader is slow (EAGAIN) and delivers all of them, in order, once it reads', async () => {
    const { cat, fd } = stalledReader();
    const w = new TurnWriter({ fd, retryMs: 5 });
    const line = (i: number) => `{"n":${i},"pad":"${'x'.repeat(200)}"}\n`;
    const total = 20_000; // ~4.5 MB: far more than the pipe and cat hold
    for (let i = 0; i < total; i++) {
      w.write(line(i));
      if (i % 1000 === 0) await turn();
    }
    await new Promise((r) => setTimeout(r, 50));
    const chunks: Buffer[] = [];
    cat.stdout.on('data', (c: Buffer) => chunks.push(c));
    cat.stdout.resume();
    let want = 0;
    for (let i = 0; i < total; i++) want += line(i).length;
    for (let i = 0; i < 400 && Buffer.concat(chunks).length < want; i++)
      await new Promise((r) => setTimeout(r, 10));
    cat.kill();
    const got = Buffer.concat(chunks).toString('utf8').trim().split('\n');
    expect(got).toHaveLength(total);
    expect((JSON.parse(got[total - 1]!) as { n: number }).n).toBe(total - 1);
    expect(got.every((l, i) => l.startsWith(`{"n":${i},`))).toBe(true);
  });

  it('drops lines beyond maxBuffered while the reader is stuck, and says how many', async () => {
    const { cat, fd } = stalledReader();
    const w = new TurnWriter({ fd, retryMs: 5, maxBuffered: 64 * 1024 });
    const line = `{"pad":"${'y'.repeat(1000)}"}\n`;
    for (let i = 0; i < 3000; i++) {
      w.write(line);
      if (i % 100 === 0) await turn();
    }
    const chunks: Buffer[] = [];
    cat.stdout.on('data', (c: Buffer) => chunks.push(c));
    cat.stdout.resume();
    // until the writer has nothing left and the output stopped growing
    let seen = -1;
    for (let i = 0; i < 300; i++) {
      await new Promise((r) => setTimeout(r, 20));
      const now = Buffer.concat(chunks).length;
      if (now === seen) break;
      seen = now;
    }
    cat.kill();
    const text = Buffer.concat(chunks).toString('utf8');
    const reports = [...text.matchAll(/"log: (\d+) lines dropped while the log reader was not reading"/g)];
    expect(reports.length).toBeGreaterThan(0);
    const dropped = reports.reduce((n, m) => n + Number(m[1]), 0);
    const kept = text.split('\n').filter((l) => l.startsWith('{"pad"')).length;
    expect(dropped).toBeGreaterThan(0);
    expect(kept).toBeLessThan(3000);
    expect(kept + dropped).toBe(3000);
  });

  it('a reader that is gone (EPIPE) does not throw; later lines are dropped quietly', async () => {
    const { cat, fd } = stalledReader();
    cat.kill('SIGKILL');
    await new Promise((r) => cat.once('exit', r));
    const w = new TurnWriter({ fd });
    w.write('{"a":1}\n');
    await turn();
    w.write('{"a":2}\n');
    await turn();
    expect(w.writes).toBe(1);
    expect(() => w.flushSync()).not.toThrow();
  });

  it('with windowMs, gathers the lines of several turns into one write, and ends a window early at highWater', async () => {
    const { fd, file } = tmpFile();
    const w = new TurnWriter({ fd, windowMs: 40, highWater: 1000 });
    for (let i = 0; i < 5; i++) {
      w.write(`{"n":${i}}\n`);
      await turn();
    }
    expect(w.writes).toBe(0); // five turns, still inside the window
    await new Promise((r) => setTimeout(r, 60));
    expect(w.writes).toBe(1);
    expect(fs.readFileSync(file, 'utf8').trim().split('\n')).toHaveLength(5);
    w.write(`{"pad":"${'z'.repeat(1200)}"}\n`); // past highWater: written when this turn ends
    await turn();
    expect(w.writes).toBe(2);
    w.write('{"last":1}\n');
    w.flushSync(); // exit: no waiting for the window
    expect(w.writes).toBe(3);
    expect(fs.readFileSync(file, 'utf8').trim().split('\n')).toHaveLength(7);
    await new Promise((r) => setTimeout(r, 60));
    expect(w.writes).toBe(3); // the cancelled window writes nothing more
  });

  it('encodes every line whole, multi-byte characters included, however long the window gets', async () => {
    const { fd, file } = tmpFile();
    const w = new TurnWriter({ fd, windowMs: 1000, highWater: 1 << 30 });
    const lines: string[] = [];
    // past the first buffer (256 KB) several times over, lines of 1-, 2-, 3- and 4-byte characters
    for (let i = 0; i < 3000; i++) {
      const line = `{"n":${i},"s":"${['a', 'é', '€', '😀'][i % 4]!.repeat(i % 300)}"}\n`;
      lines.push(line);
      w.write(line);
    }
    w.flushSync();
    expect(w.writes).toBe(1);
    expect(fs.readFileSync(file, 'utf8')).toBe(lines.join(''));
  });

  it('flushSync writes what is buffered at once (for exit)', () => {
    const { fd, file } = tmpFile();
    const w = new TurnWriter({ fd });
    w.write('{"last":true}\n');
    w.flushSync();
    expect(fs.readFileSync(file, 'utf8')).toBe('{"last":true}\n');
  });
});
