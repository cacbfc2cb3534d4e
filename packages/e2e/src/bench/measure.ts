/**
 * measure: the pieces of a benchmark run: smtp-source throughput runs, per-message latency probes with
 * our own client, and CPU time per process read from /proc, so a report can say where the time goes.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import { message, SmtpClient, smtpSource, which } from '@moat/testkit';

export interface ThroughputResult {
  messages: number;
  ms: number;
  perSecond: number;
  ok: boolean;
  output: string;
  /** The whole machine while smtp-source ran (every process, the client and the kernel included). */
  machine: MachineUse;
}

/** What the whole machine did in a window: its idle share (0..1) and context switches per message. */
export interface MachineUse {
  idle: number;
  switchesPerMsg: number;
}

/**
 * Busy and idle ticks of all CPUs and context switches so far, from /proc/stat. Steal (the host ran
 * something else) is neither: counted as busy, it would hide time in which nothing here ran.
 */
function machineCounters(): { busy: number; idle: number; ctxt: number } {
  const text = fs.readFileSync('/proc/stat', 'utf8');
  // cpu  user nice system idle iowait irq softirq steal ...
  const t = text.slice(0, text.indexOf('\n')).trim().split(/\s+/).slice(1).map(Number);
  return {
    busy: t[0]! + t[1]! + t[2]! + t[5]! + t[6]!,
    idle: t[3]! + t[4]!,
    ctxt: Number(/^ctxt (\d+)$/m.exec(text)?.[1] ?? NaN),
  };
}

/** smtp-source's arguments for `messages` of `sizeBytes` over `sessions`, one message per connection. */
function sourceArgs(port: number, o: { messages: number; sessions: number; sizeBytes: number }): string[] {
  return [
    '-s',
    String(o.sessions),
    '-m',
    String(o.messages),
    '-l',
    String(o.sizeBytes),
    '-f',
    'bench@remote.test',
    '-t',
    'bench@example.test',
    `127.0.0.1:${port}`,
  ];
}

export async function throughput(
  port: number,
  o: { messages: number; sessions: number; sizeBytes: number; perConnection: boolean },
): Promise<ThroughputResult> {
  const args = sourceArgs(port, o);
  if (o.perConnection) args.unshift('-d');
  const before = machineCounters();
  const r = await smtpSource(args, 120_000);
  const after = machineCounters();
  const idle = after.idle - before.idle;
  return {
    messages: o.messages,
    ms: r.ms,
    perSecond: (o.messages * 1000) / r.ms,
    ok: r.status === 0,
    output: r.output,
    machine: {
      idle: idle / Math.max(1, idle + after.busy - before.busy),
      switchesPerMsg: (after.ctxt - before.ctxt) / o.messages,
    },
  };
}

/** Milliseconds per whole SMTP session (connect .. final reply), `concurrency` at a time. */
export async function latency(
  port: number,
  o: { messages: number; concurrency: number; sizeBytes: number },
): Promise<number[]> {
  const body = message({ body: ('x'.repeat(76) + '\r\n').repeat(Math.max(1, Math.floor(o.sizeBytes / 78))) });
  const samples: number[] = [];
  let next = 0;
  const worker = async () => {
    while (next < o.messages) {
      next++;
      const t = process.hrtime.bigint();
      const c = await SmtpClient.connect(port);
      await c.read();
      await c.cmd('EHLO bench.remote.test');
      const r = await c.send('bench@remote.test', ['bench@example.test'], body);
      samples.push(Number(process.hrtime.bigint() - t) / 1e6);
      if (r.final?.code !== 250) throw new Error(`latency probe: ${r.final?.text ?? r.mail.text}`);
      c.destroy();
    }
  };
  await Promise.all(Array.from({ length: o.concurrency }, worker));
  return samples.sort((a, b) => a - b);
}

/** The steps of one SMTP session, each timed from the previous reply to its own. */
export const STEPS = ['banner', 'EHLO', 'MAIL', 'RCPT', 'DATA (354)', 'end of data', 'QUIT'] as const;

/** One session in lock-step, as smtp-source talks: milliseconds per step (STEPS). */
function timedSession(port: number, body: string): Promise<number[]> {
  const script = [
    'EHLO probe.remote.test',
    'MAIL FROM:<bench@remote.test>',
    'RCPT TO:<bench@example.test>',
    'DATA',
    `${body}.`,
    'QUIT',
  ];
  return new Promise((resolve, reject) => {
    const marks: number[] = [performance.now()];
    const s = net.connect({ port, host: '127.0.0.1', noDelay: true });
    let buf = '';
    s.on('data', (d) => {
      buf += d.toString('latin1');
      for (let i = buf.indexOf('\r\n'); i !== -1; i = buf.indexOf('\r\n')) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 2);
        if (/^\d{3}-/.test(line)) continue;
        marks.push(performance.now());
        if (!/^[23]/.test(line)) {
          s.destroy();
          reject(new Error(`step probe: ${line}`));
          return;
        }
        const next = script[marks.length - 2];
        if (next !== undefined) s.write(`${next}\r\n`);
      }
    });
    s.on('error', reject);
    s.on('close', () => resolve(marks.slice(1).map((m, i) => m - marks[i]!)));
  });
}

/**
 * Where a session's time goes under load: `probes` sessions one after another, each step timed
 * (STEPS), while smtp-source keeps `background` other sessions busy on the same port (bounded: it is
 * stopped when the probes are done). Returns the p50 of each step and of the whole session.
 */
export async function stepLatency(
  port: number,
  o: { probes: number; background: number; sizeBytes: number },
): Promise<{ steps: number[]; whole: number }> {
  const bin = which('smtp-source');
  if (!bin) throw new Error('smtp-source is not installed (Debian package postfix)');
  const body = message({ body: ('x'.repeat(76) + '\r\n').repeat(Math.max(1, Math.floor(o.sizeBytes / 78))) });
  const bg = spawn(
    bin,
    sourceArgs(port, { messages: 1_000_000, sessions: o.background, sizeBytes: o.sizeBytes }),
    { stdio: 'ignore' },
  );
  try {
    await new Promise((r) => setTimeout(r, 1000)); // the background load under way
    const runs: number[][] = [];
    for (let i = 0; i < o.probes; i++) runs.push(await timedSession(port, body));
    const p50 = (v: number[]) =>
      percentile(
        [...v].sort((a, b) => a - b),
        50,
      );
    return {
      steps: STEPS.map((_, k) => p50(runs.map((r) => r[k] ?? NaN))),
      whole: p50(runs.map((r) => r.reduce((a, b) => a + b, 0))),
    };
  } finally {
    // it may have ended on its own (a fatal error): then its exit has already been and gone
    if (bg.exitCode === null && bg.signalCode === null) {
      const exited = new Promise((r) => bg.once('exit', r));
      bg.kill();
      await exited;
    }
  }
}

export function percentile(sorted: number[], p: number): number {
  if (!sorted.length) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

/** The fields of /proc/PID/stat after the command name (state first), or undefined once it is gone. */
function stat(pid: number | string): string[] | undefined {
  try {
    const line = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return line.slice(line.lastIndexOf(') ') + 2).split(' ');
  } catch {
    return undefined;
  }
}

const MS_PER_TICK = 1000 / 100;

/** User + system CPU of a process so far, in ms. */
export function cpuMs(pid: number): number {
  const f = stat(pid);
  return f ? (Number(f[11]) + Number(f[12])) * MS_PER_TICK : NaN;
}

/**
 * CPU of a process and all its descendants so far, in ms: each one's user + system time and what its
 * exited children left it (cutime + cstime), so a child that exits in between is still counted.
 */
export function familyCpuMs(pid: number): number {
  const procs = new Map<number, { ppid: number; ticks: number }>();
  for (const entry of fs.readdirSync('/proc')) {
    const f = /^\d+$/.test(entry) ? stat(entry) : undefined;
    if (f)
      procs.set(Number(entry), {
        ppid: Number(f[1]),
        ticks: f.slice(11, 15).reduce((a, t) => a + Number(t), 0),
      });
  }
  if (!procs.has(pid)) return NaN;
  let ticks = 0;
  const family = [pid];
  for (let i = 0; i < family.length; i++) {
    ticks += procs.get(family[i]!)!.ticks;
    for (const [child, p] of procs) if (p.ppid === family[i]) family.push(child);
  }
  return ticks * MS_PER_TICK;
}

/**
 * The process listening on a TCP port of 127.0.0.1 (found through /proc/net/tcp and the processes'
 * socket descriptors), or undefined: how the bench finds clamd, which `npm run bench` started and only
 * passed on as an address.
 */
export function listenerPid(port: number): number | undefined {
  const hexPort = port.toString(16).toUpperCase().padStart(4, '0');
  const inode = fs
    .readFileSync('/proc/net/tcp', 'utf8')
    .split('\n')
    .map((l) => l.trim().split(/\s+/))
    .find((f) => f[1]?.endsWith(`:${hexPort}`) && f[3] === '0A')?.[9];
  if (!inode) return undefined;
  const target = `socket:[${inode}]`;
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      for (const fd of fs.readdirSync(`/proc/${entry}/fd`))
        if (fs.readlinkSync(`/proc/${entry}/fd/${fd}`) === target) return Number(entry);
    } catch {
      // gone, or not ours to read
    }
  }
  return undefined;
}
