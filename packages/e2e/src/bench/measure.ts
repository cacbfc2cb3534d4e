/**
 * measure: the pieces of a benchmark run: smtp-source throughput runs, per-message latency probes with
 * our own client, and CPU time per process read from /proc, so a report can say where the time goes.
 */
import fs from 'node:fs';
import { message, SmtpClient, smtpSource } from '@moat/testkit';

export interface ThroughputResult {
  messages: number;
  ms: number;
  perSecond: number;
  ok: boolean;
  output: string;
}

export async function throughput(
  port: number,
  o: { messages: number; sessions: number; sizeBytes: number; perConnection: boolean },
): Promise<ThroughputResult> {
  const args = [
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
  ];
  if (o.perConnection) args.unshift('-d');
  const r = await smtpSource([...args, `127.0.0.1:${port}`], 120_000);
  return {
    messages: o.messages,
    ms: r.ms,
    perSecond: (o.messages * 1000) / r.ms,
    ok: r.status === 0,
    output: r.output,
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

export function percentile(sorted: number[], p: number): number {
  if (!sorted.length) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

/** User + system CPU of a process so far, in ms. */
export function cpuMs(pid: number): number {
  try {
    const fields = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    const ticks = Number(fields[11]) + Number(fields[12]);
    return (ticks * 1000) / 100;
  } catch {
    return NaN;
  }
}
