/**
 * npm run bench: the whole chain (screen -> greylist -> filter with clamd -> delivery, fsync and Maildir)
 * against Postfix's smtp-sink measured in the same run, so every number is also a ratio that survives
 * a noisy machine. smtp-source sends N messages of 1 KB and 100 KB at 1, 10 and 50 sessions, one
 * message per connection and many (-d); then a latency probe adds p50/p99 per message; CPU per service
 * per message says where the time goes. Bounded: at most a few thousand messages per scenario.
 *
 * The goal row (1 KB, 10 sessions, one message per connection) is also measured against Postfix's own
 * path doing the chain's job, a private instance started for the run (bench/postfix.ts: postscreen ->
 * smtpd -> cleanup -> queue -> virtual into a Maildir, fsync on both): five rounds of sink, Postfix,
 * chain, each Postfix run waiting for its delivery before the chain's; the medians, the chain as a
 * multiple of Postfix (goal: 1x; target 2x), each round's rates, each one's CPU per message and what
 * the whole machine did while each ran (its idle share: a path that leaves CPU idle at 10 sessions is
 * bound by waiting, not by work; and context switches per message). Then where a session's
 * time goes: each step of one probe session (banner, EHLO, MAIL, RCPT, DATA, end of data, QUIT) beside
 * nine smtp-source sessions, through the chain and through Postfix. Without root or the Debian
 * postfix package the Postfix comparisons are skipped, with one line that says why.
 *
 *   npm run bench                 all scenarios
 *   npm run bench -- --quick      1 KB, 10 sessions only
 *   npm run bench -- --only filter   one scenario: chain, greylist, screen or filter
 */
import { spawn } from 'node:child_process';
import { parseHostPort } from '@moat/config';
import { Chain, freePort, postfixUnavailable, smtpSink, stopChild, waitForPort } from '@moat/testkit';
import {
  cpuMs,
  latency,
  listenerPid,
  type MachineUse,
  percentile,
  stepLatency,
  STEPS,
  throughput,
} from './measure.js';
import { startPostfixPath, type PostfixPath, type PostfixRun } from './postfix.js';

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

/** The goal row: 1 KB, 10 sessions, one message per connection (smtp-source without -d). */
const GOAL = '1 KB, s10, 1 msg/conn';
/** Rounds of the goal row: one run moves by up to 15% from the next on a busy virtual machine. */
const GOAL_ROUNDS = 5;

/** The median idle share and the median switches per message of several windows. */
function middleUse(uses: readonly MachineUse[]): MachineUse {
  return {
    idle: median(uses.map((u) => u.idle)) ?? NaN,
    switchesPerMsg: median(uses.map((u) => u.switchesPerMsg)) ?? NaN,
  };
}

/** The middle one of `values` by `by` (numbers by themselves); undefined when there are none. */
function median<T>(values: readonly T[], by: (v: T) => number = (v) => v as number): T | undefined {
  return [...values].sort((a, b) => by(a) - by(b))[values.length >> 1];
}

async function benchChain(): Promise<void> {
  const sinkPort = await freePort();
  const sink = await smtpSink(sinkPort);
  // The chain scenario measures the plumbing: every message is still scanned by clamd, but none is
  // sent to spamd (filter.spamd: off, recorded as "skipped: spamd off"), which would cap every row
  // at spamd's ~40 msgs/s; the filter scenario below measures scanning itself.
  const chain = await Chain.create({ config: { log: { level: 'info' }, filter: { spamd: 'off' } } });
  const clamdAt = parseHostPort(String((chain.config.filter as { clamd: string }).clamd));
  const clamd = clamdAt ? listenerPid(clamdAt.port) : undefined;
  // the services' log lines are read and dropped unparsed (Postfix's go to its maillog): the bench's
  // own process shares the machine and should not spend its CPU parsing them
  for (const p of chain.processes.values()) p.dropLogs();
  const rows: Row[] = [];
  let postfix: PostfixPath | undefined;
  let goal:
    | {
        sink: number;
        postfix: PostfixRun;
        chain: number;
        chainCpu: number;
        clamdCpu: number;
        perRound: { chain: number; postfix: number }[];
        machine: { chain: MachineUse; postfix: MachineUse };
      }
    | undefined;
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
    const noPostfix = postfixUnavailable();
    if (noPostfix) process.stdout.write(`Postfix row skipped: ${noPostfix}\n`);
    else {
      try {
        postfix = await startPostfixPath();
        // its processes started and its queue and Maildir made before anything is measured
        await postfix.run({ messages: 500, sessions: 10, sizeBytes: 1024, perConnection: false });
      } catch (err) {
        process.stdout.write(`Postfix row skipped: ${(err as Error).message}\n`);
        await postfix?.stop();
        postfix = undefined;
      }
    }
    const sizes = quick ? [1024] : [1024, 100 * 1024];
    const sessions = quick ? [10] : [1, 10, 50];
    for (const size of sizes) {
      for (const s of sessions) {
        for (const perConnection of [false, true]) {
          const n = size > 10_000 ? (s === 1 ? 200 : 1000) : s === 1 ? 500 : perConnection ? 5000 : 2000;
          const scenario = `${size >= 1024 * 100 ? '100 KB' : '1 KB'}, s${s}, ${perConnection ? '-d (many per conn)' : '1 msg/conn'}`;
          const o = { messages: n, sessions: s, sizeBytes: size, perConnection };
          // the goal row: rounds of sink, Postfix, chain; its numbers are the medians
          const rounds = scenario === GOAL ? GOAL_ROUNDS : 1;
          const sinkRuns: number[] = [];
          const chainRuns: number[] = [];
          const chainMachine: MachineUse[] = [];
          const postfixRuns: PostfixRun[] = [];
          const cpu = [...chain.processes.values()].map(() => 0);
          let clamdCpu = 0;
          for (let round = 0; round < rounds; round++) {
            const a = await throughput(sinkPort, o);
            if (!a.ok) throw new Error(`${scenario}: smtp-source failed:\n${a.output}`);
            sinkRuns.push(a.perSecond);
            if (postfix && scenario === GOAL) postfixRuns.push(await postfix.run(o));
            const cpuBefore = [...chain.processes.values()].map((p) => cpuMs(p.child.pid!));
            const clamdBefore = clamd === undefined ? NaN : cpuMs(clamd);
            const b = await throughput(chain.ports.screen, o);
            [...chain.processes.values()].forEach((p, i) => (cpu[i]! += cpuMs(p.child.pid!) - cpuBefore[i]!));
            clamdCpu += clamd === undefined ? NaN : cpuMs(clamd) - clamdBefore;
            if (!b.ok) throw new Error(`${scenario}: smtp-source failed:\n${b.output}`);
            chainRuns.push(b.perSecond);
            chainMachine.push(b.machine);
          }
          const [sinkRate, chainRate] = [median(sinkRuns)!, median(chainRuns)!];
          const row = { scenario, sink: sinkRate, chain: chainRate, ratio: chainRate / sinkRate };
          rows.push(row);
          if (scenario === GOAL) {
            const chainCpu = cpu.reduce((a, c) => a + c, 0) / (n * rounds);
            const scanCpu = clamdCpu / (n * rounds);
            // each round's chain against that round's Postfix: how far the machine's noise moves it
            const perRound = postfixRuns.map((r, i) => ({ chain: chainRuns[i]!, postfix: r.perSecond }));
            const pf = median(postfixRuns, (r) => r.perSecond);
            const delivered = postfixRuns.every((r) => r.delivered);
            if (pf)
              goal = {
                sink: row.sink,
                postfix: { ...pf, delivered },
                chain: row.chain,
                chainCpu,
                perRound,
                clamdCpu: scanCpu,
                machine: {
                  chain: middleUse(chainMachine),
                  postfix: middleUse(postfixRuns.map((r) => r.machine)),
                },
              };
          }
          const perMsg = [...chain.processes.keys()]
            .map((name, i) => `${name} ${fmt(cpu[i]! / (n * rounds), 3)}`)
            .concat(`clamd ${fmt(clamdCpu / (n * rounds), 3)}`)
            .join(', ');
          process.stdout.write(
            `${scenario.padEnd(34)} sink ${fmt(row.sink).padStart(7)}/s  chain ${fmt(row.chain).padStart(6)}/s  ratio ${(row.ratio * 100).toFixed(1).padStart(5)}%   CPU ms/msg: ${perMsg}${rounds > 1 ? ` (median of ${rounds} rounds)` : ''}\n`,
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
    const key = rows.find((r) => r.scenario === GOAL);
    if (key) {
      process.stdout.write(
        `\nskeleton goal (1 KB, 10 sessions, one message per connection): at least Postfix's own path ` +
          `measured in this run (goal: 1x; target 2x); chain at ${(key.ratio * 100).toFixed(1)}% of smtp-sink\n`,
      );
      if (goal) {
        const pf = goal.postfix;
        process.stdout.write(
          `Postfix's own path, postscreen -> smtpd -> cleanup -> queue (fsync) -> virtual into a Maildir (fsync), ` +
            `same row, median of ${GOAL_ROUNDS} rounds (sink, Postfix, chain):\n` +
            `  sink ${fmt(goal.sink)}/s  Postfix ${fmt(pf.perSecond)}/s  chain ${fmt(goal.chain)}/s\n` +
            `  chain ${((goal.chain / goal.sink) * 100).toFixed(1)}% of sink, Postfix ${((pf.perSecond / goal.sink) * 100).toFixed(1)}% of sink: ` +
            `chain ${fmt(goal.chain / pf.perSecond, 2)}x Postfix (round by round: ${goal.perRound.map((r) => fmt(r.chain / r.postfix, 2)).join(', ')})\n` +
            `  rounds, chain/s against Postfix/s: ${goal.perRound.map((r) => `${fmt(r.chain)}/${fmt(r.postfix)}`).join(', ')}\n` +
            `  CPU ms/msg: Postfix ${fmt(pf.cpuMsPerMsg, 3)} (all its processes, delivery included), chain ${fmt(goal.chainCpu, 3)} (all services) ` +
            `+ clamd ${fmt(goal.clamdCpu, 3)} (a scan of every message, which Postfix's path does not do)\n` +
            `  the whole machine while smtp-source ran (medians): Postfix ${fmt(goal.machine.postfix.idle * 100)}% idle, ` +
            `${fmt(goal.machine.postfix.switchesPerMsg, 1)} context switches per message; chain ${fmt(goal.machine.chain.idle * 100)}% idle, ` +
            `${fmt(goal.machine.chain.switchesPerMsg, 1)} per message\n` +
            (pf.delivered
              ? ''
              : '  (Postfix had not delivered everything within 30 s: its delivery overlapped the next run)\n'),
        );
      }
      // where the time goes: each step of one session beside nine busy ones, chain and Postfix
      const probe = { probes: quick ? 100 : 300, background: 9, sizeBytes: 1024 };
      const paths: [string, number][] = [['chain', chain.ports.screen]];
      if (postfix) paths.push(['Postfix', postfix.port]);
      const lines: string[] = [];
      for (const [name, port] of paths) {
        const t = await stepLatency(port, probe);
        lines.push(
          `  ${name.padEnd(8)}${t.steps.map((v, k) => fmt(v, 2).padStart(STEPS[k]!.length + 2)).join('')}${fmt(t.whole, 1).padStart(9)}`,
        );
      }
      process.stdout.write(
        `where a session's time goes, ms at p50 from the previous reply (one session after another, ` +
          `beside 9 smtp-source sessions):\n` +
          `  ${''.padEnd(8)}${STEPS.map((s) => s.padStart(s.length + 2)).join('')}    whole\n` +
          lines.join('\n') +
          '\n',
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
    await postfix?.stop();
    await chain.stop();
    await sink.stop();
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`bench failed: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
