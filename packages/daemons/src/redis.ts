/**
 * redis: a real Redis server on loopback, in the foreground, persisting nothing. Exports
 * startRedis, redisArgs and redisPing (an inline PING).
 */
import path from 'node:path';
import {
  type CommonOptions,
  type DaemonHandle,
  HOST,
  onPort,
  sharedDir,
  spawnDaemon,
  stopPid,
  tcpExchange,
} from './process.js';
import { requireTool } from './tools.js';

export function redisArgs(port: number, dir: string): string[] {
  return [
    '--bind',
    HOST,
    '--port',
    String(port),
    '--save',
    '',
    '--appendonly',
    'no',
    '--daemonize',
    'no',
    '--dir',
    dir,
  ];
}

/** '+PONG' when Redis is up. */
export async function redisPing(port: number, timeoutMs = 1000): Promise<string> {
  return (await tcpExchange(port, 'PING\r\n', (r) => r.includes('\r\n'), timeoutMs)).trim();
}

/** The handle's address is redis://127.0.0.1:port. */
export async function startRedis(opts: CommonOptions): Promise<DaemonHandle> {
  const bin = requireTool('redis-server');
  const stateDir = sharedDir(opts.stateDir);
  const logFile = path.join(stateDir, 'redis.out');
  return onPort(opts.port, 'tcp', async (port) => {
    const { pid, readyMs, exited } = await spawnDaemon({
      name: 'redis',
      command: bin,
      args: redisArgs(port, stateDir),
      logFile,
      probe: async () => (await redisPing(port, 500)) === '+PONG',
      timeoutMs: opts.timeoutMs,
      detached: opts.detached,
    });
    return {
      name: 'redis',
      address: `redis://${HOST}:${port}`,
      port,
      pid,
      logFile,
      readyMs,
      exited,
      stop: () => stopPid(pid),
    };
  });
}
