/**
 * greylist bench: Postgrey's rules, measured against Postgrey itself in the same run. Policy requests
 * per second (and p50/p99 per request) on the policy port, for moat-greylist on SQLite and on Redis
 * and for Postgrey (/usr/sbin/postgrey, BerkeleyDB); then RCPT decisions per second in the MX smtpd
 * (a 451 per new triplet, so every decision is a store write). Each request is a new triplet, each
 * connection asks one request at a time as Postfix does; 32 connections, as 32 smtpd processes would
 * hold (MOAT_BENCH_CONNECTIONS to change it); every server gets the same generator, settings and
 * warm-up, and each row is the median of three runs (one run moved by up to 10%). Each row adds the
 * CPU per request of the server process and of this one (the generator).
 * Goal: 10x Postgrey, p99 under 5 ms.
 *
 * Not like for like in one respect: Postgrey's BerkeleyDB fdatasyncs every request (its throughput
 * waits on the disk), moat's SQLite commits (WAL, synchronous=NORMAL) are synced at checkpoints only,
 * by design: a crash may lose the last seconds of greylist state, which costs a retry.
 * Exports greylistBench (called from main.ts).
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import { startRedis, type DaemonHandle } from '@moat/daemons';
import { Chain, freePort, SmtpClient, smtpSink, stopChild, tmpDir, waitForPort, which } from '@moat/testkit';
import { policyRequest, policyRequestBytes, startTinyDns } from '../greylist-support.js';
import { cpuMs, percentile } from './measure.js';

interface Run {
  perSecond: number;
  p50: number;
  p99: number;
  /** CPU microseconds per request of the server process and of this process (the load generator). */
  serverUs?: number;
  generatorUs?: number;
}

/** Runs `run` and adds the CPU time per request the server (pid) and this process spent on it. */
async function withCpu(pid: number | undefined, total: number, run: () => Promise<Run>): Promise<Run> {
  const server = pid === undefined ? NaN : cpuMs(pid);
  const self = process.cpuUsage();
  const r = await run();
  const used = process.cpuUsage(self);
  r.serverUs = pid === undefined ? NaN : ((cpuMs(pid) - server) * 1000) / total;
  r.generatorUs = (used.user + used.system) / total;
  return r;
}

/**
 * The median of `runs` measured runs (by requests per second; its latencies and CPU with it): one run
 * of 20,000 requests moved by up to 10% from one run to the next on this machine, for every server.
 */
async function median(runs: number, measure: () => Promise<Run>): Promise<Run> {
  const all: Run[] = [];
  for (let i = 0; i < runs; i++) all.push(await measure());
  all.sort((a, b) => a.perSecond - b.perSecond);
  return all[Math.floor(all.length / 2)]!;
}

function fmt(n: number, d = 0): string {
  return Number.isFinite(n) ? n.toFixed(d) : '-';
}

const DEFER = Buffer.from('action=DEFER_IF_PERMIT ');

/**
 * `total` new triplets over `connections` connections, each waiting for its answer before it asks
 * again (as each Postfix smtpd does). Lean on purpose, as the generator shares the two cores with
 * the server: the requests are encoded before the clock starts, each connection is a small state
 * machine (no promise per request), answers are checked as bytes. p50/p99 are over every request.
 */
async function policyRun(port: number, total: number, connections: number, tag: string): Promise<Run> {
  const requests = Array.from({ length: total }, (_, i) =>
    policyRequestBytes(
      policyRequest(
        `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`,
        `s${i}-${tag}@remote.test`,
        'bench@example.test',
        { client_name: 'unknown' },
      ),
    ),
  );
  const sockets = await Promise.all(
    Array.from(
      { length: connections },
      () =>
        new Promise<net.Socket>((resolve, reject) => {
          const s = net.connect(port, '127.0.0.1', () => resolve(s));
          s.once('error', reject);
          s.setNoDelay(true);
        }),
    ),
  );
  const samples = new Float64Array(total);
  let next = 0;
  let answered = 0;
  const started = performance.now();
  // a server that stops answering fails the run instead of hanging the bench
  let seen = -1;
  const watchdog = setInterval(() => {
    if (answered === seen)
      sockets.forEach((s) => s.destroy(new Error(`no answer for 10 s (${answered}/${total})`)));
    seen = answered;
  }, 10_000);
  await new Promise<void>((resolve, reject) => {
    let running = sockets.length;
    for (const socket of sockets) {
      let current = -1;
      let sent = 0;
      let partial: Buffer | undefined;
      const ask = () => {
        if (next >= total) {
          if (--running === 0) resolve();
          return;
        }
        current = next++;
        sent = performance.now();
        socket.write(requests[current]!);
      };
      socket.on('error', reject);
      socket.on('data', (chunk: Buffer) => {
        const answer = partial ? Buffer.concat([partial, chunk]) : chunk;
        // one request in flight: its answer is complete when the bytes end with the empty line
        const n = answer.length;
        if (n < 2 || answer[n - 1] !== 10 || answer[n - 2] !== 10) {
          partial = answer;
          return;
        }
        partial = undefined;
        samples[current] = performance.now() - sent;
        answered++;
        if (answer.indexOf('\n\n') !== n - 2 || answer.compare(DEFER, 0, DEFER.length, 0, DEFER.length) !== 0)
          return reject(new Error(`policy bench: unexpected answer ${answer.toString('latin1')}`));
        ask();
      });
      ask();
    }
  }).finally(() => clearInterval(watchdog));
  const ms = performance.now() - started;
  sockets.forEach((s) => s.destroy());
  const sorted = Array.from(samples.sort());
  return { perSecond: (total * 1000) / ms, p50: percentile(sorted, 50), p99: percentile(sorted, 99) };
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
  const total = quick ? 2000 : 20_000;
  // warm-up before each measured run, the same for every server (requests and stored triplets): after
  // 2,000 the greylist process was still compiling, its CPU per RCPT falling from about 41 to 30 us
  // over the next runs; a server in production has long been past that
  const warm = quick ? 500 : 10_000;
  const runs = quick ? 1 : 3;
  // as many Postfix smtpd processes, each with its policy connection (Postfix allows 100 by default)
  const connections = Number(process.env.MOAT_BENCH_CONNECTIONS ?? 32);
  // every run a new tag: each run's triplets are new ones
  let next = 0;
  const dns = await startTinyDns({});
  let redis: DaemonHandle | undefined;
  const out = (s: string) => process.stdout.write(s + '\n');
  out(
    `\ngreylist: ${total} new triplets per run, median of ${runs} runs, ${connections} connections, one request at a time per connection`,
  );
  const row = (name: string, r: Run, base?: number) =>
    out(
      `  ${name.padEnd(38)} ${fmt(r.perSecond).padStart(7)}/s  p50 ${fmt(r.p50, 2)} ms  p99 ${fmt(r.p99, 2)} ms` +
        (base ? `   ${fmt(r.perSecond / base, 1).padStart(4)}x Postgrey` : ''.padEnd(14)) +
        `   CPU us/req: server ${fmt(r.serverUs ?? NaN)}, generator ${fmt(r.generatorUs ?? NaN)}`,
    );
  try {
    const pg = await startPostgrey();
    let base: number | undefined;
    if (pg) {
      try {
        await policyRun(pg.port, warm, connections, 'warm');
        const r = await median(runs, () =>
          withCpu(pg.child.pid, total, () => policyRun(pg.port, total, connections, `pg${next++}`)),
        );
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
        // e.g. MOAT_BENCH_NODE_ARGS='--cpu-prof --cpu-prof-dir=/tmp/prof' to profile the service
        nodeArgs: process.env.MOAT_BENCH_NODE_ARGS?.split(' ').filter(Boolean) ?? [],
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
        const service = chain.service('greylist');
        service.dropLogs();
        const pid = service.child.pid;
        await policyRun(policy, warm, connections, `warm-${kind}`);
        row(
          `moat policy port (${kind})`,
          await median(runs, () =>
            withCpu(pid, total, () => policyRun(policy, total, connections, `${kind}${next++}`)),
          ),
          base,
        );
        await rcptRun(chain.ports.greylist, warm, connections, `warm-${kind}`);
        row(
          `moat smtpd RCPT decisions (${kind})`,
          await median(runs, () =>
            withCpu(pid, total, () => rcptRun(chain.ports.greylist, total, connections, `${kind}${next++}`)),
          ),
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
