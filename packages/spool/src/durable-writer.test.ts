import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { DurableWriter, type DurableWriterOptions } from './durable-writer.js';

const dir = () => fs.mkdtempSync(path.join(os.tmpdir(), 'moat-writer-'));
const writers: DurableWriter[] = [];

function writer(o: DurableWriterOptions = {}): {
  w: DurableWriter;
  batches: { jobs: number; dirSyncs: number }[];
} {
  const batches: { jobs: number; dirSyncs: number }[] = [];
  const w = new DurableWriter({ ...o, onBatch: (b) => batches.push(b) });
  writers.push(w);
  return { w, batches };
}

/** A worker script given as a data: URL (a stand-in for a worker that crashes or hangs). */
const script = (code: string) => new URL(`data:text/javascript,${encodeURIComponent(code)}`);

afterEach(async () => {
  await Promise.all(writers.splice(0).map((w) => w.close()));
});

describe('DurableWriter', () => {
  it('with a folder that cannot be fsynced (EIO): fails, removes a new file, keeps one that replaced another', async () => {
    const d = dir();
    fs.writeFileSync(path.join(d, 'old'), 'older');
    // the real worker, with opening a directory (for its fsync) failing as a dying disk would
    const failingDirs = script(`
      import fs from 'node:fs';
      const open = fs.openSync;
      fs.openSync = (file, flags, ...rest) => {
        if (typeof flags === 'number' && flags & fs.constants.O_DIRECTORY)
          throw Object.assign(new Error('EIO: i/o error, open'), { code: 'EIO', syscall: 'open' });
        return open(file, flags, ...rest);
      };
      await import(${JSON.stringify(new URL('../dist/durable-worker.js', import.meta.url).href)});
    `);
    const { w } = writer({ workerUrl: failingDirs });
    await expect(w.write(d, 'new', [Buffer.from('new')])).rejects.toMatchObject({ code: 'EIO' });
    await expect(w.write(d, 'old', [Buffer.from('newer')], { replace: true })).rejects.toMatchObject({
      code: 'EIO',
    });
    expect(fs.readdirSync(d)).toEqual(['old']);
    expect(fs.readFileSync(path.join(d, 'old'), 'utf8')).toBe('newer');
  });

  it('writes buffers and streams in order under the final name only, through the worker', async () => {
    const d = dir();
    const { w, batches } = writer();
    const r = await w.write(d, 'one', [
      Buffer.from('head\n'),
      Readable.from([Buffer.from('a'), Buffer.from('b')]),
    ]);
    expect(r).toEqual({ path: path.join(d, 'one'), bytes: 7 });
    expect(fs.readFileSync(path.join(d, 'one'), 'utf8')).toBe('head\nab');
    expect(fs.readdirSync(d)).toEqual(['one']);
    expect(batches).toEqual([{ jobs: 1, dirSyncs: 1 }]);
  });

  it('keeps no descriptor of a folder it synced: one removed and made again gets its own fsync', async () => {
    const d = dir();
    const open = () =>
      fs.readdirSync('/proc/self/fd').filter((fd) => {
        try {
          return fs.readlinkSync(`/proc/self/fd/${fd}`).startsWith(d);
        } catch {
          return false;
        }
      });
    const { w } = writer();
    const big = { maxBytes: 0 };
    const { w: streaming } = writer(big); // writeDurable's path: syncDir
    await w.write(d, 'a', [Buffer.from('a')]);
    await streaming.write(d, 'b', [Buffer.from('b')]);
    expect(open()).toEqual([]);
    fs.rmSync(d, { recursive: true });
    fs.mkdirSync(d);
    await w.write(d, 'c', [Buffer.from('c')]);
    await streaming.write(d, 'd', [Buffer.from('d')]);
    expect(fs.readdirSync(d).sort()).toEqual(['c', 'd']);
    expect(open()).toEqual([]);
  });

  it('writes under tmpDir and names the final file after its size (Maildir)', async () => {
    const d = dir();
    fs.mkdirSync(path.join(d, 'tmp'));
    fs.mkdirSync(path.join(d, 'new'));
    const { w } = writer();
    const r = await w.write(path.join(d, 'new'), (n) => `base,S=${n}`, [Buffer.from('12345')], {
      tmpDir: path.join(d, 'tmp'),
      tmpName: 'base',
    });
    expect(r.path).toBe(path.join(d, 'new', 'base,S=5'));
    expect(fs.readdirSync(path.join(d, 'new'))).toEqual(['base,S=5']);
    expect(fs.readdirSync(path.join(d, 'tmp'))).toEqual([]);
  });

  it('gives the writes of one turn one batch and one fsync per directory', async () => {
    const [a, b] = [dir(), dir()];
    const { w, batches } = writer();
    await Promise.all(
      Array.from({ length: 40 }, (_, i) => w.write(i % 2 ? a : b, `m${i}`, [Buffer.from(String(i))])),
    );
    expect(batches).toEqual([{ jobs: 40, dirSyncs: 2 }]);
    expect(fs.readdirSync(a).length + fs.readdirSync(b).length).toBe(40);
    expect(fs.readFileSync(path.join(a, 'm7'), 'utf8')).toBe('7');
  });

  it('streams a message larger than maxBytes without the worker', async () => {
    const d = dir();
    const { w, batches } = writer({ maxBytes: 16 });
    const chunk = Buffer.alloc(10, 'x');
    const r = await w.write(d, 'big', [
      Buffer.from('head:'),
      Readable.from([chunk, chunk, chunk]),
      Buffer.from('!'),
    ]);
    expect(r.bytes).toBe(36);
    expect(fs.readFileSync(path.join(d, 'big'), 'utf8')).toBe(`head:${'x'.repeat(30)}!`);
    expect(batches).toEqual([]);
  });

  it('rejects with the error code and leaves nothing when the folder is missing', async () => {
    const d = dir();
    const { w } = writer();
    await expect(w.write(path.join(d, 'missing'), 'x', [Buffer.from('x')])).rejects.toMatchObject({
      code: 'ENOENT',
    });
    expect(fs.readdirSync(d)).toEqual([]);
  });

  it('fails only the write that cannot be created; the rest of its batch is written and synced', async () => {
    const d = dir();
    const { w, batches } = writer();
    const results = await Promise.allSettled([
      w.write(d, 'first', [Buffer.from('1')]),
      w.write(path.join(d, 'missing'), 'lost', [Buffer.from('2')]),
      w.write(d, 'last', [Buffer.from('3')]),
    ]);
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
    expect(batches).toEqual([{ jobs: 3, dirSyncs: 1 }]);
    expect(fs.readdirSync(d).sort()).toEqual(['first', 'last']);
    expect(fs.readFileSync(path.join(d, 'last'), 'utf8')).toBe('3');
  });

  it('removes the temporary file when the rename fails, and the others in the batch still succeed', async () => {
    const d = dir();
    fs.mkdirSync(path.join(d, 'taken'));
    fs.writeFileSync(path.join(d, 'taken', 'keep'), 'x'); // a non-empty folder cannot be renamed over
    const { w } = writer();
    const [bad, good] = await Promise.allSettled([
      w.write(d, 'taken', [Buffer.from('message')]),
      w.write(d, 'fine', [Buffer.from('message')]),
    ]);
    expect(bad.status).toBe('rejected');
    expect(good.status).toBe('fulfilled');
    expect(fs.readdirSync(d).sort()).toEqual(['fine', 'taken']);
    expect(fs.readdirSync(path.join(d, 'taken'))).toEqual(['keep']);
  });

  it('fails the writes of a worker stopped mid-flight, removes their files, and starts a new one', async () => {
    const d = dir();
    const { w } = writer();
    const body = Buffer.alloc(256 * 1024, 'y');
    const writes = Array.from({ length: 50 }, (_, i) => w.write(d, `m${i}`, [body]));
    // stop it once it is writing: the first temporary file is there
    while (!fs.readdirSync(d).length) await new Promise((r) => setTimeout(r, 1));
    await w.close();
    const settled = await Promise.allSettled(writes);
    const failed = settled.flatMap((s, i) => (s.status === 'rejected' ? [i] : []));
    expect(failed.length).toBeGreaterThan(0);
    // a write that succeeded is there in full; one that failed left nothing, not even a temp file
    const left = fs.readdirSync(d).sort();
    const done = settled.flatMap((s, i) => (s.status === 'fulfilled' ? [`m${i}`] : []));
    expect(left).toEqual(done.sort());
    for (const name of left) expect(fs.statSync(path.join(d, name)).size).toBe(body.length);
    // the next write starts a new worker
    await expect(w.write(d, 'after', [Buffer.from('ok')])).resolves.toMatchObject({ bytes: 2 });
  });

  it('never removes the file a replacing write was to replace when its worker dies', async () => {
    const d = dir();
    fs.writeFileSync(path.join(d, 'deferred'), 'the only copy');
    // a worker that dies before it touches anything (a crash, or close() on stop)
    const dying = script(
      "import { parentPort } from 'node:worker_threads'; parentPort.on('message', () => { throw new Error('boom'); });",
    );
    const { w } = writer({ workerUrl: dying });
    await expect(w.write(d, 'deferred', [Buffer.from('newer')], { replace: true })).rejects.toThrow(/boom/);
    expect(fs.readFileSync(path.join(d, 'deferred'), 'utf8')).toBe('the only copy');
  });

  it('fails the writes of a worker that crashes after its rename, with both its files removed first', async () => {
    const d = dir();
    // the worst moment: the temporary file and the final name are there, the directory not fsynced
    const crashing = script(
      "import fs from 'node:fs'; import { parentPort } from 'node:worker_threads';" +
        "parentPort.on('message', (jobs) => { for (const j of jobs) { fs.writeFileSync(j.tmp, 'half');" +
        " fs.writeFileSync(j.final, 'not durable'); } throw new Error('boom'); });",
    );
    const { w } = writer({ workerUrl: crashing });
    await expect(w.write(d, 'a', [Buffer.from('x')])).rejects.toThrow(/exited with code 1: boom/);
    expect(fs.readdirSync(d)).toEqual([]);
    // restarted for the next write (which crashes it again), never hanging
    await expect(w.write(d, 'b', [Buffer.from('x')])).rejects.toThrow(/boom/);
    expect(fs.readdirSync(d)).toEqual([]);
  });

  it('fails the writes of a worker that stops answering after timeoutMs', async () => {
    const d = dir();
    const silent = script(
      "import { parentPort } from 'node:worker_threads'; parentPort.on('message', () => {});",
    );
    const { w } = writer({ workerUrl: silent, timeoutMs: 200 });
    const t0 = Date.now();
    await expect(w.write(d, 'a', [Buffer.from('x')])).rejects.toThrow('did not answer within 200 ms');
    expect(Date.now() - t0).toBeLessThan(2000);
  });
});
