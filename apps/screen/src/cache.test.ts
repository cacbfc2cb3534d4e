import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { memoryLogger } from '@moat/log';
import { SQLITE_FILE } from '@moat/reputation';
import { PassCache } from './cache.js';

async function until<T>(fn: () => Promise<T | undefined> | T | undefined, what: string): Promise<T> {
  const end = Date.now() + 5000;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('the pass cache', () => {
  it('serves without a store it cannot open, and takes the store into use once it opens', async () => {
    const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'moat-cache-'));
    // the database file cannot be opened: a folder stands in its place
    fs.mkdirSync(path.join(dataDir, SQLITE_FILE));
    const { logger, lines } = memoryLogger();
    const cache = await PassCache.open({
      store: 'sqlite',
      dataDir,
      retentionMs: 86_400_000,
      cleanupIntervalMs: 0,
      logger,
      reopenMs: 50,
    });
    try {
      expect(cache.kind).toBe('none');
      expect(await cache.lookup('192.0.2.9')).toBeUndefined();
      cache.pass('192.0.2.9', 'pregreet', 60_000); // nowhere to go, and no error
      expect(lines.filter((l) => l.level === 'error').map((l) => l.msg)).toEqual([
        'warning: reputation store unavailable: screening without the pass cache',
      ]);
      // the operator mends it: the next attempt opens the store
      fs.rmdirSync(path.join(dataDir, SQLITE_FILE));
      await until(() => (cache.kind === 'sqlite' ? true : undefined), 'the store to open');
      expect(lines.map((l) => l.msg)).toContain('pass cache store opened: cache in use');
      cache.pass('192.0.2.9', 'pregreet', 60_000);
      const record = await until(() => cache.lookup('192.0.2.9'), 'the pass to be recorded');
      expect(Object.keys(record.passes)).toEqual(['pregreet']);
    } finally {
      await cache.close();
      fs.rmSync(dataDir, { recursive: true, force: true });
    }
  });

  it('logs a store it cannot open without the password in its URL', async () => {
    const { logger, lines } = memoryLogger();
    const cache = await PassCache.open({
      store: 'redis://moat:s3cret@127.0.0.1:notaport',
      dataDir: os.tmpdir(),
      retentionMs: 86_400_000,
      cleanupIntervalMs: 0,
      logger,
      reopenMs: 60_000,
    });
    await cache.close();
    expect(lines).toHaveLength(1);
    expect(JSON.stringify(lines[0])).not.toContain('s3cret');
    expect(lines[0]).toMatchObject({ store: 'redis://moat:********@127.0.0.1:notaport' });
  });
});
