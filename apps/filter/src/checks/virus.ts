/**
 * virus: ClamAV through clamd's INSTREAM, over TCP (`host:port`) or a unix socket (`/path`).
 *
 * From the `clamscan` package we use NodeClamTransform, which frames the stream as zINSTREAM. We do not
 * use its NodeClam.scanStream, because (clamscan 2.4):
 *  - it writes to the socket without backpressure (`socket.write` in a 'data' handler, the input never
 *    paused), so a 30 MB message would sit in the process's memory while clamd reads it;
 *  - its timeout is the socket's idle timeout, and when it fires after the connection is made the scan
 *    resolves `{ isInfected: null }` (the rejection is lost on an already settled promise) instead of
 *    failing: a result that reads as "not infected" to a careless caller;
 *  - it reports `Heuristics.Limits.Exceeded.*` and `Heuristics.Encrypted.*` as viruses, and loses
 *    clamd's `INSTREAM size limit exceeded` reply when clamd closes while it is still writing;
 *  - it prints to stderr (console.error) on every socket error.
 * So the transport here is a dozen lines: the transform piped with backpressure into the socket, one
 * timer for the whole scan, and clamd's reply classified so that only `stream: OK` is clean.
 */
import { once } from 'node:events';
import net from 'node:net';
import type { Readable } from 'node:stream';
import NodeClamTransform from 'clamscan/lib/NodeClamTransform.js';
import { type CheckResult, type ScanInput, timed } from './types.js';

export type ClamdTarget = { path: string } | { host: string; port: number };

export function parseClamd(address: string): ClamdTarget {
  if (address.startsWith('/')) return { path: address };
  if (address.startsWith('unix:')) return { path: address.slice(5) };
  const m = /^\[?([^\]]+?)\]?:(\d+)$/.exec(address);
  if (!m) throw new Error(`clamd: not host:port or a socket path: ${address}`);
  return { host: m[1]!, port: Number(m[2]) };
}

export class ClamdError extends Error {
  constructor(
    readonly kind: 'timeout' | 'connect' | 'closed',
    message: string,
  ) {
    super(message);
    this.name = 'ClamdError';
  }
}

/** Streams `source` to clamd with zINSTREAM and resolves clamd's reply line (without the NUL). */
export function clamdInstream(target: ClamdTarget, source: Readable, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = 'path' in target ? net.connect({ path: target.path }) : net.connect(target);
    sock.setNoDelay(true);
    // created only while the writer waits for 'drain': AbortController.abort() builds a DOMException
    // with a stack trace, which showed in profiles when it was done for every scan
    let abort: AbortController | undefined;
    const chunks: Buffer[] = [];
    let connected = false;
    let settled = false;
    let socketError: Error | undefined;
    const reply = () =>
      Buffer.concat(chunks)
        .toString('latin1')
        .replace(/\0[\s\S]*$/, '')
        .trim();
    const finish = (err: Error | undefined, text?: string) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      abort?.abort();
      source.destroy();
      sock.destroy();
      if (err) reject(err);
      else resolve(text!);
    };
    const timer = setTimeout(
      () => finish(new ClamdError('timeout', `clamd: no verdict within ${timeoutMs} ms`)),
      timeoutMs,
    );
    sock.on('data', (d: Buffer) => {
      chunks.push(d);
      if (d.includes(0)) finish(undefined, reply());
    });
    sock.on('error', (err) => {
      socketError = err;
    });
    sock.on('close', () => {
      const text = reply();
      // clamd may close while we still write (a size limit): its reply, when it came, is the answer
      if (text) finish(undefined, text);
      else if (!connected)
        finish(new ClamdError('connect', `clamd: ${socketError?.message ?? 'connection failed'}`));
      else finish(new ClamdError('closed', `clamd: connection closed without a verdict`));
    });
    sock.on('connect', () => {
      connected = true;
      void (async () => {
        const framed = source.pipe(new NodeClamTransform({}, false));
        source.on('error', (err) => framed.destroy(err));
        try {
          for await (const chunk of framed as AsyncIterable<Buffer>) {
            if (settled) return;
            if (!sock.write(chunk)) {
              abort = new AbortController();
              await once(sock, 'drain', { signal: abort.signal });
              abort = undefined;
            }
          }
        } catch (err) {
          if (!settled && !(err instanceof Error && err.name === 'AbortError')) {
            // our side failed (spool unreadable): never a verdict
            finish(err as Error);
          }
        }
      })();
    });
  });
}

export type ClamdVerdict =
  | { kind: 'clean' }
  | { kind: 'virus'; names: string[] }
  | { kind: 'limit'; what: string }
  | { kind: 'encrypted'; what: string }
  | { kind: 'error'; what: string };

/** clamd's reply, classified. Only `stream: OK` is clean; anything unknown is an error. */
export function classifyClamd(reply: string): ClamdVerdict {
  const text = reply.replace(/\0/g, '').trim();
  if (/^(stream|[^:]*): OK$/.test(text)) return { kind: 'clean' };
  const found = /^[^:]*: (.+) FOUND$/.exec(text);
  if (found) {
    const names = found[1]!.split(/\s*,\s*/).filter(Boolean);
    const limit = names.find((n) => /^Heuristics\.Limits\.Exceeded/i.test(n));
    if (limit) return { kind: 'limit', what: limit };
    const viruses = names.filter((n) => !/^Heuristics\.Encrypted/i.test(n));
    if (viruses.length) return { kind: 'virus', names: viruses };
    return { kind: 'encrypted', what: names[0]! };
  }
  if (/size limit exceeded/i.test(text)) return { kind: 'limit', what: 'INSTREAM size limit exceeded' };
  return { kind: 'error', what: text || 'empty reply' };
}

export interface VirusData {
  verdict: ClamdVerdict;
}

export interface VirusDeps {
  clamd: ClamdTarget;
  timeoutMs: number;
  /** 'pass': clamd's Heuristics.Encrypted findings are ignored; 'unchecked': they are a failure. */
  encryptedArchives: 'unchecked' | 'pass';
}

export function virusCheck(msg: ScanInput, deps: VirusDeps): Promise<CheckResult<VirusData>> {
  return timed<VirusData>(
    'virus',
    async () => {
      let verdict: ClamdVerdict;
      try {
        verdict = classifyClamd(await clamdInstream(deps.clamd, msg.stream(), deps.timeoutMs));
      } catch (err) {
        const e = err as Error;
        verdict = { kind: 'error', what: e instanceof ClamdError ? e.message : `clamd: ${e.message}` };
      }
      switch (verdict.kind) {
        case 'clean':
          return { outcome: 'pass', detail: 'clean', data: { verdict } };
        case 'virus':
          return { outcome: 'fail', detail: `INFECTED: ${verdict.names.join(', ')}`, data: { verdict } };
        case 'encrypted':
          if (deps.encryptedArchives === 'pass')
            return { outcome: 'pass', detail: `clean (${verdict.what} ignored)`, data: { verdict } };
          return { outcome: 'error', detail: `encrypted: ${verdict.what}`, data: { verdict } };
        case 'limit':
          return { outcome: 'error', detail: `limit exceeded: ${verdict.what}`, data: { verdict } };
        default:
          return { outcome: 'error', detail: verdict.what, data: { verdict } };
      }
    },
    (e) => ({ verdict: { kind: 'error', what: e.message } }),
  );
}
