/**
 * bench/screen: screen's own scenario, each number beside the direct path (straight to greylist, with
 * the PROXY header screen would send) measured in the same run:
 *  - memory: 10,000 idle clients held open in screen (denylisted under `enforce`: they sit in the
 *    enforce engine, one socket each), RSS per idle connection;
 *  - new-client decisions per second with those 10,000 idle connections open: DNSBL-listed clients
 *    from 127.3/16 (answers from rbldnsd), greetWait 100 ms, dnsblAction drop, until their 521;
 *  - cached clients (PASS OLD): added latency to the banner, and connections per second at 10 in
 *    parallel.
 * Goals (issue 3): cached client < 1 ms added; >= 2,000 new connections/s with 10,000 idle open;
 * < 10 KB per idle connection.
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { startRbldnsd, writeZone } from '@moat/daemons';
import { Chain, ScriptedServer, tmpDir } from '@moat/testkit';
import { percentile } from './measure.js';

const IDLE = 10_000;
const NEW_CLIENTS = 6_000;
const NEW_CONCURRENCY = 400;
const CACHED = 2_000;

function rssKb(pid: number): number {
  const m = /VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : NaN;
}

/** Connects, optionally writes `first`, resolves with the ms until a line matching `until` arrived. */
function probe(
  port: number,
  o: { localAddress?: string; first?: string; until: RegExp; keep?: boolean },
): Promise<{ ms: number; socket: net.Socket }> {
  return new Promise((resolve, reject) => {
    const t = process.hrtime.bigint();
    const socket = net.connect({ host: '127.0.0.1', port, localAddress: o.localAddress, noDelay: true });
    let got = '';
    socket.on('error', reject);
    socket.once('connect', () => {
      if (o.first) socket.write(o.first);
    });
    socket.on('data', (d: Buffer) => {
      got += d.toString('latin1');
      if (o.until.test(got)) {
        socket.removeAllListeners('data');
        const ms = Number(process.hrtime.bigint() - t) / 1e6;
        if (!o.keep) socket.destroy();
        resolve({ ms, socket });
      }
    });
  });
}

async function pool<T>(n: number, concurrency: number, fn: (i: number) => Promise<T>): Promise<T[]> {
  const out: T[] = [];
  let next = 0;
  const worker = async () => {
    while (next < n) {
      const i = next++;
      out[i] = await fn(i);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  return out;
}

const v4 = (prefix: string, i: number) => `${prefix}.${(i >> 8) & 255}.${i & 255 || 1}`;

export async function benchScreen(
  out: (line: string) => void = (l) => process.stdout.write(l + '\n'),
): Promise<void> {
  const stateDir = tmpDir('moat-bench-screen-');
  const dir = path.join(stateDir, 'rbldnsd');
  fs.mkdirSync(dir);
  writeZone(dir, 'zen.zone', ['127.0.0.2 :127.0.0.2:test point', '127.3.0.0/16 :127.0.0.4:listed $']);
  const dns = await startRbldnsd({
    stateDir,
    dir,
    zones: [{ name: 'zen.test', type: 'ip4set', file: 'zen.zone' }],
  });
  const next = await ScriptedServer.start();
  const chain = await Chain.create({
    services: ['greylist', 'screen'],
    config: {
      dns: { servers: [dns.address] },
      greylist: { next: [`127.0.0.1:${next.port}`] },
      screen: {
        greetWait: '100ms',
        dnsblSites: ['zen.test=127.0.0.[2..11]'],
        dnsblAction: 'drop',
        accessList: ['reject 127.4.0.0/16'],
        accessAction: 'enforce',
        preQueueLimit: IDLE + 2 * NEW_CONCURRENCY,
      },
    },
  });
  const idle: net.Socket[] = [];
  try {
    const screenPort = chain.ports.screen;
    const greyPort = chain.ports.greylist;
    const pid = chain.service('screen').child.pid!;
    const proxy = (ip: string) => `PROXY TCP4 ${ip} 127.0.0.1 40000 25\r\n`;

    // idle connections held in screen
    const before = rssKb(pid);
    for (let start = 0; start < IDLE; start += 500) {
      const batch = await Promise.all(
        Array.from({ length: Math.min(500, IDLE - start) }, (_, k) =>
          probe(screenPort, { localAddress: v4('127.4', start + k), until: /^220 /m, keep: true }),
        ),
      );
      idle.push(...batch.map((b) => b.socket));
    }
    await new Promise((r) => setTimeout(r, 500));
    const after = rssKb(pid);
    out(
      `screen: ${IDLE} idle connections (enforce engine): RSS ${(before / 1024).toFixed(1)} -> ${(after / 1024).toFixed(1)} MB, ` +
        `${((after - before) / IDLE).toFixed(2)} KB per idle connection (goal < 10 KB)`,
    );

    // new-client decisions with the idle connections open
    const d0 = Date.now();
    await pool(NEW_CLIENTS, NEW_CONCURRENCY, (i) =>
      probe(screenPort, {
        localAddress: v4('127.3', i),
        until: /^521 5\.7\.1 .* blocked using zen\.test\r\n/m,
      }),
    );
    const screenRate = (NEW_CLIENTS * 1000) / (Date.now() - d0);
    const g0 = Date.now();
    await pool(NEW_CLIENTS, NEW_CONCURRENCY, (i) =>
      probe(greyPort, { first: proxy(v4('127.3', i)), until: /^220 /m }),
    );
    const directRate = (NEW_CLIENTS * 1000) / (Date.now() - g0);
    out(
      `screen: new-client decisions (DNSBL from rbldnsd, greetWait 100 ms, ${NEW_CONCURRENCY} in parallel, ${IDLE} idle open): ` +
        `${screenRate.toFixed(0)}/s; direct to greylist (banner): ${directRate.toFixed(0)}/s (goal >= 2000/s)`,
    );
    for (const s of idle.splice(0)) s.destroy();

    // cached clients: make 127.5.0.1 known, then measure the banner latency
    await probe(screenPort, { localAddress: '127.5.0.1', until: /^220 [^\r\n]*\r\n/m });
    await new Promise((r) => setTimeout(r, 200));
    const through = (
      await pool(CACHED, 1, () => probe(screenPort, { localAddress: '127.5.0.1', until: /^220 /m }))
    ).map((r) => r.ms);
    const direct = (
      await pool(CACHED, 1, () => probe(greyPort, { first: proxy('127.5.0.1'), until: /^220 /m }))
    ).map((r) => r.ms);
    through.sort((a, b) => a - b);
    direct.sort((a, b) => a - b);
    const t0 = Date.now();
    await pool(CACHED, 10, () => probe(screenPort, { localAddress: '127.5.0.1', until: /^220 /m }));
    const cachedRate = (CACHED * 1000) / (Date.now() - t0);
    const t1 = Date.now();
    await pool(CACHED, 10, () => probe(greyPort, { first: proxy('127.5.0.1'), until: /^220 /m }));
    const directCachedRate = (CACHED * 1000) / (Date.now() - t1);
    out(
      `screen: cached client (PASS OLD) to banner: p50 ${percentile(through, 50).toFixed(2)} ms p99 ${percentile(through, 99).toFixed(2)} ms; ` +
        `direct p50 ${percentile(direct, 50).toFixed(2)} ms p99 ${percentile(direct, 99).toFixed(2)} ms; ` +
        `added p50 ${(percentile(through, 50) - percentile(direct, 50)).toFixed(2)} ms (goal < 1 ms); ` +
        `10 in parallel: ${cachedRate.toFixed(0)}/s vs direct ${directCachedRate.toFixed(0)}/s`,
    );
  } finally {
    for (const s of idle) s.destroy();
    await chain.stop();
    await next.close();
    await dns.stop();
  }
}
