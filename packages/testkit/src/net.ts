/**
 * net: free loopback ports and temporary folders for tests.
 */
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { freePort as daemonsFreePort } from '@moat/daemons';

/** A free TCP port on 127.0.0.1, below the kernel's ephemeral range (see @moat/daemons' freePort). */
export function freePort(): Promise<number> {
  return daemonsFreePort('tcp');
}

export function tmpDir(prefix = 'moat-test-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

/** The repository root (the folder whose package.json declares the workspaces). */
export function repoRoot(from = path.dirname(new URL(import.meta.url).pathname)): string {
  let dir = from;
  for (;;) {
    const pkg = path.join(dir, 'package.json');
    if (fs.existsSync(pkg) && JSON.parse(fs.readFileSync(pkg, 'utf8')).workspaces) return dir;
    const up = path.dirname(dir);
    if (up === dir) throw new Error('repository root not found');
    dir = up;
  }
}

export async function waitFor<T>(
  fn: () => T | undefined | Promise<T | undefined>,
  timeoutMs = 5000,
  what = 'condition',
): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined && v !== false) return v as T;
    if (Date.now() > until) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Resolves once something accepts TCP connections on 127.0.0.1:port. */
export function waitForPort(port: number, timeoutMs = 5000, what = `port ${port}`): Promise<true> {
  return waitFor(
    () =>
      new Promise<true | undefined>((resolve) => {
        const s = net.connect(port, '127.0.0.1');
        s.once('connect', () => {
          s.destroy();
          resolve(true);
        });
        s.once('error', () => resolve(undefined));
      }),
    timeoutMs,
    what,
  );
}
