/**
 * npm run bench: the whole chain (screen -> greylist -> filter with clamd -> delivery, fsync and Maildir)
 * against Postfix's smtp-sink measured in the same run, so every number is also a ratio that survives
 * a noisy machine. smtp-source sends N messages of 1 KB and 100 KB at 1, 10 and 50 sessions, one
 * message per connection and many (-d); then a latency probe adds p50/p99 per message; CPU per service
 * per message says where the time goes. Bounded: at most a few thousand messages per scenario.
 *
 *   npm run bench                 all scenarios
 *   npm run bench -- --quick      1 KB, 10 sessions only
 *   npm run bench -- --only filter   one scenario: chain, greylist, screen or filter
 */
import { spawn } from 'node:child_process';
import { Chain, freePort, smtpSink, stopChild, waitForPort } from '@moat/testkit';
import { cpuMs, latency, percentile, throughput } from './measure.js';

/**
 * The floor under any design that relays every packet through a Node process (as screen does): a bare
 * splice, net.Socket piped both ways with no-delay and no SMTP at all, in front of smtp-sink.
 */
const BARE_SPLICE = `
import net from 'node:net';
const [listen, target] = process.argv.slice(1).map(Number);
net.createServer({ noDelay: true }, (c) => {
  c.pause();
  const u = net.connect({ host: '127.0.0.1', port: target, noDelay: true }, () => { c.pipe(u); u.pipe(c); c.resume(); });
  const both = () => { c.destroy(); u.destroy(); };
  c.on('error', both); u.on('error', both);
}).listen(listen, '127.0.0.1');`;

async function bareSplice(
  sinkPort: number,
  o: { messages: number; sessions: number; sizeBytes: number; perConnection: boolean },
): Promise<{ perSecond: number; cpuMsPerMsg: number }> {
  const port = await freePort();
  const child = spawn(
    process.execPath,
    ['--input-type=module', '-e', BARE_SPLICE, String(port), String(sinkPort)],
    {
      stdio: 'ignore',
    },
  );
  try {
    await waitForPort(port);
    await throughput(port, { ...o, messages: 500 }); // warm-up
    const before = cpuMs(child.pid!);
    const r = await throughput(port, o);
    if (!r.ok) throw new Error(`bare splice: smtp-source failed:\n${r.output}`);
    return { perSecond: r.perSecond, cpuMsPerMsg: (cpuMs(child.pid!) - before) / o.messages };
  } finally {
    await stopChild(child);
  }
}

const quick = process.argv.includes('--quick');
const onlyAt = process.argv.indexOf('--only');
const only = onlyAt >= 0 ? process.argv[onlyAt + 1] : undefined;
const wanted = (name: string) => !only || only === name;

interface Row {
  scenario: string;
  sink: number;
  chain: number;
  ratio: number;
}

function fmt(n: number, digits = 0): string {
  return Number.isFinite(n) ? n.toFixed(digits) : '-';
}

async function main(): Promise<void> {
  if (wanted('chain')) await benchChain();
  if (wanted('greylist')) await (await import('./greylist.js')).greylistBench(quick);
  if (wanted('screen')) await (await import('./screen.js')).benchScreen();
  if (wanted('filter')) await (await import('./filter.js')).benchFilter(quick);
}

async function benchChain(): Promise<void> {
  const sinkPort = await freePort();
  const sink = await smtpSink(sinkPort);
  // The chain scenario measures the plumbing: every message is still scanned by clamd, but none is
  // sent to spamd (spamMaxSize 1 byte: "skipped: size", as amavis does for large mail), which would
  // cap every row at spamd's ~40 msgs/s; the filter scenario below measures scanning itself.
  const chain = await Chain.create({ config: { log: { level: 'info' }, filter: { spamMaxSize: 1 } } });
  const rows: Row[] = [];
  try {
    // warm-up, not measured: the services' code compiled and optimised, their pools and caches filled,
    // as on a server that has been running (after 1,000 messages V8 was still compiling: the CPU per
    // message kept falling by about 10% until 3,000)
    const warm = await throughput(chain.ports.screen, {
      messages: 3000,
      sessions: 10,
      sizeBytes: 1024,
      perConnection: false,
    });
    if (!warm.ok) throw new Error(`warm-up: smtp-source failed:\n${warm.output}`);
    const sizes = quick ? [1024] : [1024, 100 * 1024];
    const sessions = quick ? [10] : [1, 10, 50];
    for (const size of sizes) {
      for (const s of sessions) {
        for (const perConnection of [false, true]) {
          const n = size > 10_000 ? (s === 1 ? 200 : 1000) : s === 1 ? 500 : perConnection ? 5000 : 2000;
          const scenario = `${size >= 1024 * 100 ? '100 KB' : '1 KB'}, s${s}, ${perConnection ? '-d (many per conn)' : '1 msg/conn'}`;
          const a = await throughput(sinkPort, { messages: n, sessions: s, sizeBytes: size, perConnection });
          const cpuBefore = [...chain.processes.values()].map((p) => cpuMs(p.child.pid!));
          const b = await throughput(chain.ports.screen, {
            messages: n,
            sessions: s,
            sizeBytes: size,
            perConnection,
          });
          const cpuAfter = [...chain.processes.values()].map((p) => cpuMs(p.child.pid!));
          if (!a.ok || !b.ok) throw new Error(`${scenario}: smtp-source failed:\n${a.output}\n${b.output}`);
          const row = { scenario, sink: a.perSecond, chain: b.perSecond, ratio: b.perSecond / a.perSecond };
          rows.push(row);
          const perMsg = [...chain.processes.keys()]
            .map((name, i) => `${name} ${fmt((cpuAfter[i]! - cpuBefore[i]!) / n, 3)}`)
            .join(', ');
          process.stdout.write(
            `${scenario.padEnd(34)} sink ${fmt(a.perSecond).padStart(7)}/s  chain ${fmt(b.perSecond).padStart(6)}/s  ratio ${(row.ratio * 100).toFixed(1).padStart(5)}%   CPU ms/msg: ${perMsg}\n`,
          );
        }
      }
    }
    for (const size of sizes) {
      const probe = { messages: quick ? 200 : 500, concurrency: 10, sizeBytes: size };
      const direct = await latency(sinkPort, probe);
      const through = await latency(chain.ports.screen, probe);
      process.stdout.write(
        `latency ${size >= 100 * 1024 ? '100 KB' : '1 KB'}, 10 concurrent, whole session: ` +
          `sink p50 ${fmt(percentile(direct, 50), 2)} ms p99 ${fmt(percentile(direct, 99), 2)} ms; ` +
          `chain p50 ${fmt(percentile(through, 50), 2)} ms p99 ${fmt(percentile(through, 99), 2)} ms; ` +
          `added p50 ${fmt(percentile(through, 50) - percentile(direct, 50), 2)} ms, p99 ${fmt(percentile(through, 99) - percentile(direct, 99), 2)} ms\n`,
      );
    }
    const key = rows.find((r) => r.scenario === '1 KB, s10, 1 msg/conn');
    if (key) {
      process.stdout.write(
        `\nskeleton goal (1 KB, 10 sessions, one message per connection): chain at ${(key.ratio * 100).toFixed(1)}% of smtp-sink ` +
          `(Postfix's postscreen->smtpd->queue path: about 10%; goal 20%)\n`,
      );
      const bare = await bareSplice(sinkPort, {
        messages: 2000,
        sessions: 10,
        sizeBytes: 1024,
        perConnection: false,
      });
      process.stdout.write(
        `floor: a bare Node splice (no SMTP) in front of smtp-sink, same row: ${fmt(bare.perSecond)}/s, ` +
          `${((bare.perSecond / key.sink) * 100).toFixed(1)}% of smtp-sink, ${fmt(bare.cpuMsPerMsg, 3)} ms CPU per message in the splice\n`,
      );
    }
  } finally {
    await chain.stop();
    await sink.stop();
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`bench failed: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
