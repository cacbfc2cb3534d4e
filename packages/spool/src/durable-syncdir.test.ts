/**
 * writeDurable when the fsync of the directory fails (EIO from a failing disk), with node:fs's open
 * made to fail for directories: the error is thrown and the file renamed into place is removed, so a
 * message the caller answered 4xx for is not also left to be delivered.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it, vi } from 'vitest';

const failing = vi.hoisted(() => ({ dirs: false }));

vi.mock('node:fs', async (importOriginal) => {
  const real = await importOriginal<typeof import('node:fs')>();
  const open = ((file: fs.PathLike, flags: number, ...rest: unknown[]) => {
    const cb = rest[rest.length - 1] as (err: NodeJS.ErrnoException | null, fd?: number) => void;
    if (failing.dirs && typeof flags === 'number' && flags & real.constants.O_DIRECTORY) {
      cb(
        Object.assign(new Error(`EIO: i/o error, open '${String(file)}'`), { code: 'EIO', syscall: 'open' }),
      );
      return;
    }
    (real.open as (...a: unknown[]) => void)(file, flags, ...rest);
  }) as typeof fs.open;
  return { ...real, open, default: { ...real, open } };
});

const { writeDurable } = await import('./durable.js');

describe('writeDurable with a directory that cannot be fsynced', () => {
  it('throws and removes a new file, but keeps one that replaced another', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moat-syncdir-'));
    try {
      await writeDurable(dir, 'ok', [Buffer.from('first')]);
      expect(fs.readdirSync(dir)).toEqual(['ok']);
      failing.dirs = true;
      await expect(writeDurable(dir, 'lost', [Buffer.from('second')])).rejects.toMatchObject({ code: 'EIO' });
      expect(fs.readdirSync(dir)).toEqual(['ok']);
      // a file written over another (a deferred file rewritten) stays: the one it replaced is gone
      await expect(writeDurable(dir, 'ok', [Buffer.from('newer')], { replace: true })).rejects.toMatchObject({
        code: 'EIO',
      });
      expect(fs.readFileSync(path.join(dir, 'ok'), 'utf8')).toBe('newer');
    } finally {
      failing.dirs = false;
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
