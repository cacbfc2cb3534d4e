/**
 * tools: the real SMTP clients and peers a user would use, run as processes: swaks, Postfix's
 * smtp-source and smtp-sink.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import { waitForPort } from './net.js';

export function which(tool: string): string | undefined {
  for (const dir of [...(process.env.PATH ?? '').split(':'), '/usr/sbin', '/usr/bin', '/sbin']) {
    const p = `${dir}/${tool}`;
    if (dir && fs.existsSync(p)) return p;
  }
  return undefined;
}

export interface SwaksResult {
  exitCode: number;
  output: string;
  /** Server reply lines ("<- " and "<** " lines, without the arrow). */
  replies: string[];
  /** The last server reply line. */
  last: string;
}

/** Runs swaks; `args` as on the command line, e.g. ['--to', 'user@example.test']. */
export function swaks(
  args: string[],
  opts: { timeoutMs?: number; input?: string } = {},
): Promise<SwaksResult> {
  const bin = which('swaks');
  if (!bin) throw new Error('swaks is not installed (Debian package swaks)');
  return new Promise((resolve, reject) => {
    const child = spawn(bin, ['--hide-informational', ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr.on('data', (d: Buffer) => (output += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 30_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      const replies = output
        .split('\n')
        .filter((l) => /^\s*<[-*~]+ /.test(l))
        .map((l) => l.replace(/^\s*<[-*~]+\s+/, '').trimEnd());
      resolve({ exitCode: code ?? -1, output, replies, last: replies[replies.length - 1] ?? '' });
    });
    child.stdin.end(opts.input ?? '');
  });
}

/**
 * Runs smtp-source to completion. Asynchronous on purpose: a test or benchmark that blocked its event
 * loop here would stop reading the services' log pipes and stall them (pino waits when stdout is full).
 */
export function smtpSource(
  args: string[],
  timeoutMs = 120_000,
): Promise<{ status: number | null; output: string; ms: number }> {
  const bin = which('smtp-source');
  if (!bin) throw new Error('smtp-source is not installed (Debian package postfix)');
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr.on('data', (d: Buffer) => (output += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', reject);
    child.on('close', (status) => {
      clearTimeout(timer);
      resolve({ status, output, ms: Date.now() - started });
    });
  });
}

/** Starts Postfix's smtp-sink on 127.0.0.1:port; resolves once it accepts connections. */
export async function smtpSink(
  port: number,
  args: string[] = [],
): Promise<{ child: ChildProcess; stop(): Promise<void> }> {
  const bin = which('smtp-sink');
  if (!bin) throw new Error('smtp-sink is not installed (Debian package postfix)');
  const uid = process.getuid?.() === 0 ? ['-u', 'postfix'] : [];
  const child = spawn(bin, [...uid, ...args, `127.0.0.1:${port}`, '1024'], { stdio: 'ignore' });
  await waitForPort(port, 5000, 'smtp-sink');
  return {
    child,
    stop: () => stopChild(child),
  };
}

/** SIGTERM to a child process; resolves when it has exited (at once if it already has). */
export function stopChild(child: ChildProcess): Promise<void> {
  return new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once('exit', () => resolve());
    child.kill('SIGTERM');
  });
}
