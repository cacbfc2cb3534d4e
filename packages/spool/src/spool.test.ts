import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { describe, expect, it, vi } from 'vitest';
import { removeOrphans, tmpName, writeDurable } from './durable.js';
import { readEnvelopeHead, writeEnvelopeFile } from './envelope-file.js';
import { MessageSpool, SPOOL_NAME } from './message-spool.js';

const dir = () => fs.mkdtempSync(path.join(os.tmpdir(), 'moat-spool-'));

describe('writeDurable', () => {
  it('writes buffers and streams in order under the final name only', async () => {
    const d = dir();
    const r = await writeDurable(d, 'one', [
      Buffer.from('head\n'),
      Readable.from([Buffer.from('a'), Buffer.from('b')]),
    ]);
    expect(r.bytes).toBe(7);
    expect(fs.readFileSync(path.join(d, 'one'), 'utf8')).toBe('head\nab');
    expect(fs.readdirSync(d)).toEqual(['one']);
  });

  it('leaves nothing behind when the stream fails (a client gone mid-DATA)', async () => {
    const d = dir();
    const failing = new Readable({
      read() {
        this.push(Buffer.from('partial'));
        this.destroy(new Error('client went away'));
      },
    });
    await expect(writeDurable(d, 'two', [failing])).rejects.toThrow('client went away');
    expect(fs.readdirSync(d)).toEqual([]);
  });

  it('group-commits concurrent writes into one directory', async () => {
    const d = dir();
    await Promise.all(
      Array.from({ length: 50 }, (_, i) => writeDurable(d, `m${i}`, [Buffer.from(String(i))])),
    );
    expect(fs.readdirSync(d).length).toBe(50);
  });
});

describe('a write the disk cannot take in full (ENOSPC, or here EFBIG past the file size limit)', () => {
  it("fails with the disk's error code and the file's path, and leaves nothing", () => {
    const d = dir();
    // in a process whose files may not exceed 64 KB (ulimit -f; Node ignores SIGXFSZ): write(2) takes
    // what fits and returns the count, the next write fails, as on a disk that fills up mid-message
    const dist = new URL('../dist/index.js', import.meta.url).href;
    const script = `
      import { Readable } from 'node:stream';
      import { DurableWriter, writeDurable } from '${dist}';
      const big = Buffer.alloc(200 * 1024, 'x');
      const out = {};
      const w = new DurableWriter();
      for (const [how, fn] of [
        ['stream', () => writeDurable(process.argv[2], 'a', [Readable.from([big])])],
        ['worker', () => w.write(process.argv[2], 'b', [big])],
      ]) {
        await fn().then(() => (out[how] = 'written'), (e) => (out[how] = { code: e.code, message: e.message }));
      }
      await w.close();
      console.log(JSON.stringify(out));`;
    // a file, not -e: the worker thread would inherit --input-type
    const file = path.join(dir(), 'write.mjs');
    fs.writeFileSync(file, script);
    const r = spawnSync('sh', ['-c', 'ulimit -f 128 && exec "$0" "$1" "$2"', process.execPath, file, d], {
      encoding: 'utf8',
    });
    expect(r.stderr).toBe('');
    const out = JSON.parse(r.stdout) as Record<string, { code: string; message: string }>;
    // before: the streamed write failed with 'short write: 65536 of 204800 bytes' (no code, no file),
    // the worker's with 'EFBIG: file too large, write' (no file)
    for (const how of ['stream', 'worker']) {
      expect(out[how]?.code).toBe('EFBIG');
      expect(out[how]?.message).toContain(d);
    }
    expect(fs.readdirSync(d)).toEqual([]);
  });
});

describe('envelope files', () => {
  it('keep the envelope line and the message together', async () => {
    const d = dir();
    await writeEnvelopeFile(d, { v: 1, id: 'ID1', from: 'a@b' }, [Buffer.from('Subject: x\r\n\r\nbody\r\n')]);
    const { head, bodyOffset, size } = await readEnvelopeHead(path.join(d, 'ID1'));
    expect(head).toEqual({ v: 1, id: 'ID1', from: 'a@b' });
    expect(fs.readFileSync(path.join(d, 'ID1')).subarray(bodyOffset).toString()).toBe(
      'Subject: x\r\n\r\nbody\r\n',
    );
    expect(size - bodyOffset).toBe(20);
  });
});

describe('MessageSpool', () => {
  it('keeps small messages in memory and spills large ones to a file it removes', async () => {
    const d = dir();
    const small = await MessageSpool.from(Readable.from([Buffer.from('tiny')]), {
      dir: d,
      memoryLimit: 1024,
    });
    expect(small.file).toBeUndefined();
    expect(small.buffer()?.toString()).toBe('tiny');
    const chunk = Buffer.alloc(100 * 1024, 'x');
    const big = await MessageSpool.from(Readable.from([chunk, chunk, chunk]), { dir: d, memoryLimit: 1024 });
    expect(big.file).toBeDefined();
    expect(big.size).toBe(300 * 1024);
    let read = 0;
    for await (const c of big.stream()) read += (c as Buffer).length;
    expect(read).toBe(300 * 1024);
    await big.dispose();
    expect(fs.readdirSync(d)).toEqual([]);
  });

  it('fails and leaves no file when the disk fills up in the middle of a write (a short write)', async () => {
    const d = dir();
    const open = fsp.open;
    // the disk takes half of the first write, then is full: what write(2) does on ENOSPC
    const spy = vi.spyOn(fsp, 'open').mockImplementation(async (...args: Parameters<typeof open>) => {
      const h = await open(...args);
      const write = h.write.bind(h) as (b: Buffer, o: number, l: number) => Promise<{ bytesWritten: number }>;
      let calls = 0;
      Object.assign(h, {
        write: async (buf: Buffer, off = 0, len = buf.length - off) => {
          if (calls++ === 0) return write(buf, off, Math.ceil(len / 2));
          throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
        },
      });
      return h;
    });
    try {
      const chunk = Buffer.alloc(50 * 1024, 'x');
      // before: resolved with a spool of 100 KB whose file held 50 KB, scanned and forwarded as whole
      await expect(
        MessageSpool.from(Readable.from([chunk, chunk]), { dir: d, memoryLimit: 1024 }),
      ).rejects.toMatchObject({ code: 'ENOSPC' });
      expect(fs.readdirSync(d)).toEqual([]);
    } finally {
      spy.mockRestore();
    }
  });

  it('joins a message that came in pieces once, however often it is read', async () => {
    const pieces = ['Subject: a\r\n', '\r\n', 'body ', 'in pieces\r\n'].map((p) => Buffer.from(p));
    const spool = await MessageSpool.from(Readable.from(pieces), { dir: dir(), memoryLimit: 1024 });
    const first = spool.buffer()!;
    expect(first.toString()).toBe('Subject: a\r\n\r\nbody in pieces\r\n');
    expect(spool.buffer()).toBe(first); // the same copy, not a new one per reader
    let read = '';
    for await (const c of spool.stream({ start: 14 })) read += (c as Buffer).toString();
    expect(read).toBe('body in pieces\r\n');
  });
});

describe('removeOrphans (at start-up)', () => {
  it("removes the temporary files of processes that are gone, and of this pid's earlier holder; keeps the rest", async () => {
    const d = dir();
    const dead = spawnSync('true').pid; // a process that has exited
    const names = [
      `spool-${dead}-1-1`,
      `spool-${process.pid}-1-2`, // a container restarts with the same pid: an earlier life's file
      'spool-1-1-3', // pid 1 runs: a live process's file is never touched
      'message-kept',
    ];
    for (const n of names) fs.writeFileSync(path.join(d, n), 'x');
    expect(await removeOrphans(d, SPOOL_NAME)).toBe(2);
    expect(fs.readdirSync(d).sort()).toEqual(['message-kept', 'spool-1-1-3']);
    // writeDurable's temporary names, the default pattern
    const tmp = path.basename(tmpName(d, 'ID1')).replace(`.${process.pid}.`, `.${dead}.`);
    fs.writeFileSync(path.join(d, tmp), 'half');
    expect(await removeOrphans(d)).toBe(1);
    expect(fs.readdirSync(d).sort()).toEqual(['message-kept', 'spool-1-1-3']);
    expect(await removeOrphans(path.join(d, 'none'))).toBe(0);
  });
});
