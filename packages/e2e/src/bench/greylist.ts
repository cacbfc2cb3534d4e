/**
 * greylist bench: Postgrey's rules, measured against Postgrey itself in the same run. Policy requests
 * per second (and p50/p99 per request) on the policy port, for moat-greylist on SQLite and on Redis
 * and for Postgrey (/usr/sbin/postgrey, BerkeleyDB); then RCPT decisions per second in the MX smtpd
 * (a 451 per new triplet, so every decision is a store write). Each request is a new triplet, each
 * connection asks one request at a time as Postfix does. Goal: 10x Postgrey, p99 under 5 ms.
 * Exports greylistBench (called from main.ts).
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { startRedis, type DaemonHandle } from '@moat/daemons';
import { Chain, freePort, SmtpClient, smtpSink, stopChild, tmpDir, waitForPort, which } from '@moat/testkit';
import { PolicyClient, policyRequest, startTinyDns } from '../greylist-support.js';
import { percentile } from './measure.js';

interface Run {
  perSecond: number;
  p50: number;
  p99: number;
}

function fmt(n: number, d = 0): string {
  return Number.isFinite(n) ? n.toFixed(d) : '-';
}

async function policyRun(port: number, total: number, connections: number, tag: string): Promise<Run> {
  const clients = await Promise.all(Array.from({ length: connections }, () => PolicyClient.connect(port)));
  const samples: number[] = [];
  let next = 0;
  const started = process.hrtime.bigint();
  await Promise.all(
    clients.map(async (c) => {
      while (next < total) {
        const i = next++;
        const t = process.hrtime.bigint();
        const a = await c.ask(
          policyRequest(
            `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`,
            `s${i}-${tag}@remote.test`,
            'bench@example.test',
            { client_name: 'unknown' },
          ),
        );
        samples.push(Number(process.hrtime.bigint() - t) / 1e6);
        if (!a.startsWith('DEFER_IF_PERMIT')) throw new Error(`policy bench: unexpected answer ${a}`);
      }
    }),
  );
  const ms = Number(process.hrtime.bigint() - started) / 1e6;
  clients.forEach((c) => c.close());
  samples.sort((a, b) => a - b);
  return { perSecond: (total * 1000) / ms, p50: percentile(samples, 50), p99: percentile(samples, 99) };
}

async function rcptRun(port: number, total: number, sessions: number, tag: string): Promise<Run> {
  const samples: number[] = [];
  let next = 0;
  const started = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: sessions }, async () => {
      const c = await SmtpClient.connect(port);
      await c.read();
      await c.cmd('EHLO bench.remote.test');
      let inTx = 0;
      while (next < total) {
        const i = next++;
        if (inTx === 0) await c.cmd(`MAIL FROM:<m${i}-${tag}@remote.test>`);
        const t = process.hrtime.bigint();
        const r = await c.cmd(`RCPT TO:<r${i}@example.test>`);
        samples.push(Number(process.hrtime.bigint() - t) / 1e6);
        if (r.code !== 451) throw new Error(`rcpt bench: ${r.text}`);
        if (++inTx === 100) {
          await c.cmd('RSET');
          inTx = 0;
        }
      }
      await c.quit();
    }),
  );
  const ms = Number(process.hrtime.bigint() - started) / 1e6;
  samples.sort((a, b) => a - b);
  return { perSecond: (total * 1000) / ms, p50: percentile(samples, 50), p99: percentile(samples, 99) };
}

async function startPostgrey(): Promise<
  { port: number; child: ChildProcess; stop(): Promise<void> } | undefined
> {
  const bin = which('postgrey');
  if (!bin) return undefined;
  const port = await freePort();
  const dir = tmpDir('moat-postgrey-');
  fs.chmodSync(dir, 0o755);
  const asRoot = process.getuid?.() === 0;
  if (asRoot) spawnSync('chown', ['nobody', dir]);
  const child = spawn(
    bin,
    [`--inet=127.0.0.1:${port}`, `--dbdir=${dir}`, ...(asRoot ? ['--user=nobody'] : [])],
    {
      stdio: 'ignore',
    },
  );
  await waitForPort(port, 15_000, 'postgrey');
  return {
    port,
    child,
    stop: () => stopChild(child),
  };
}

export async function greylistBench(quick = false): Promise<void> {
  const total = quick ? 2000 : 10_000;
  const connections = 16;
  const dns = await startTinyDns({});
  let redis: DaemonHandle | undefined;
  const out = (s: string) => process.stdout.write(s + '\n');
  out(
    `\ngreylist: ${total} new triplets per run, ${connections} connections, one request at a time per connection`,
  );
  const row = (name: string, r: Run, base?: number) =>
    out(
      `  ${name.padEnd(38)} ${fmt(r.perSecond).padStart(7)}/s  p50 ${fmt(r.p50, 2)} ms  p99 ${fmt(r.p99, 2)} ms` +
        (base ? `   ${fmt(r.perSecond / base, 1)}x Postgrey` : ''),
    );
  try {
    const pg = await startPostgrey();
    let base: number | undefined;
    if (pg) {
      try {
        await policyRun(pg.port, 200, connections, 'warm');
        const r = await policyRun(pg.port, total, connections, 'pg');
        base = r.perSecond;
        row('Postgrey policy port (BerkeleyDB)', r);
      } finally {
        await pg.stop();
      }
    } else out('  postgrey not installed: no baseline');
    if (process.env.MOAT_TEST_REDIS) {
      // use the suite's Redis
    } else {
      const dir = tmpDir('moat-bench-redis-');
      fs.chmodSync(dir, 0o755);
      redis = await startRedis({ stateDir: dir });
    }
    const redisUrl = process.env.MOAT_TEST_REDIS ?? redis!.address;
    const sinkPort = await freePort();
    const sink = await smtpSink(sinkPort);
    for (const store of ['sqlite', redisUrl]) {
      const policy = await freePort();
      const chain = await Chain.create({
        services: ['greylist'],
        config: {
          store,
          // the RCPT run connects from 127.0.0.1: not one of "our" networks here, or nothing is greylisted
          mynetworks: ['::1/128'],
          dns: { servers: [dns.server], timeout: '1s' },
          // SPF keying off: every request here is a new client address, so it would time a DNS round trip
          // smtp-sink stands in for filter: only MAIL reaches it, every RCPT here is greylisted
          greylist: {
            enabled: true,
            spfKeying: false,
            next: [`127.0.0.1:${sinkPort}`],
            policyListen: `127.0.0.1:${policy}`,
            proxyPeers: ['192.0.2.254/32'],
          },
        },
      });
      const kind = store === 'sqlite' ? 'SQLite' : 'Redis';
      try {
        await policyRun(policy, 200, connections, `warm-${kind}`);
        row(`moat policy port (${kind})`, await policyRun(policy, total, connections, kind), base);
        await rcptRun(chain.ports.greylist, 200, connections, `warm-${kind}`);
        row(
          `moat smtpd RCPT decisions (${kind})`,
          await rcptRun(chain.ports.greylist, total, connections, kind),
          base,
        );
      } finally {
        await chain.stop();
      }
    }
    await sink.stop();
  } finally {
    await redis?.stop();
    await dns.close();
  }
}
