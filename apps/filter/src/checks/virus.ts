/**
 * virus: ClamAV through clamd's INSTREAM, over TCP (`host:port`) or a unix socket (`/path`), on pooled
 * clamd sessions (zIDSESSION).
 *
 * We do not use the `clamscan` package's NodeClam.scanStream, because (clamscan 2.4):
 *  - it writes to the socket without backpressure (`socket.write` in a 'data' handler, the input never
 *    paused), so a 30 MB message would sit in the process's memory while clamd reads it;
 *  - its timeout is the socket's idle timeout, and when it fires after the connection is made the scan
 *    resolves `{ isInfected: null }` (the rejection is lost on an already settled promise) instead of
 *    failing: a result that reads as "not infected" to a careless caller;
 *  - it reports `Heuristics.Limits.Exceeded.*` and `Heuristics.Encrypted.*` as viruses, and loses
 *    clamd's `INSTREAM size limit exceeded` reply when clamd closes while it is still writing;
 *  - it prints to stderr (console.error) on every socket error;
 *  - it opens a connection per scan: connect and close were a large share of the filter's CPU.
 * So the transport is here: `zINSTREAM\0`, `<uint32 BE length><bytes>` chunks written with
 * backpressure straight from the spool, a zero length; one timer for the whole scan; clamd's reply
 * classified so that only `stream: OK` is clean.
 *
 * Sessions (ClamdClient): `zIDSESSION\0` once per connection, then one command at a time; replies come
 * back as `<id>: <reply>\0`. A session whose command ended in OK or FOUND goes back to a LIFO pool of
 * idle sessions (at most maxIdle, each for at most idleMs: clamd drops a silent client after its
 * ReadTimeout, 120 s by default, with an unsolicited `COMMAND READ TIMED OUT`). Any other reply (clamd
 * closes the session after an error such as `INSTREAM size limit exceeded`), a timeout, a socket error,
 * stray bytes or a close drop the session. When a session taken from the pool turns out to be closed
 * before it answered our command (clamd timed it out just then), the scan is retried once on a fresh
 * connection: a scan is idempotent. A fresh connection is never retried.
 */
import { once } from 'node:events';
import net from 'node:net';
import type { Readable } from 'node:stream';
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
    readonly kind: 'timeout' | 'connect' | 'closed' | 'protocol',
    message: string,
  ) {
    super(message);
    this.name = 'ClamdError';
  }
}

const Z_IDSESSION = Buffer.from('zIDSESSION\0', 'latin1');
const Z_INSTREAM = Buffer.from('zINSTREAM\0', 'latin1');
const Z_END = Buffer.from('zEND\0', 'latin1');
const LAST_CHUNK = Buffer.alloc(4);
/** A reply after which clamd keeps the session open (it closes it after errors). */
const SESSION_KEPT = /: (?:OK|.+ FOUND)$/;
const ID_PREFIX = /^(\d+): /;

interface Command {
  /** A NUL-terminated reply; `extra`: more bytes came after the NUL. */
  reply(text: string, extra: boolean): void;
  /** The connection closed first: whatever came (no NUL), and whether it ever connected. */
  closed(partial: string, connected: boolean, err: Error | undefined): void;
}

/** One connection to clamd in IDSESSION mode, one command in flight. */
class Session {
  readonly sock: net.Socket;
  connected = false;
  closed = false;
  idleSince = 0;
  private seq = 0;
  private chunks: Buffer[] = [];
  private command: Command | undefined;
  private error: Error | undefined;

  constructor(target: ClamdTarget, onClose: (s: Session) => void) {
    this.sock = 'path' in target ? net.connect({ path: target.path }) : net.connect(target);
    this.sock.setNoDelay(true);
    this.sock.write(Z_IDSESSION);
    this.sock.on('connect', () => {
      this.connected = true;
    });
    this.sock.on('error', (err) => {
      this.error ??= err;
    });
    this.sock.on('data', (d: Buffer) => this.onData(d));
    this.sock.on('close', () => {
      this.closed = true;
      onClose(this);
      const c = this.command;
      this.command = undefined;
      c?.closed(Buffer.concat(this.chunks).toString('latin1').trim(), this.connected, this.error);
    });
  }

  /** Whether it can take a command: clamd may have ended it while it sat in the pool. */
  get usable(): boolean {
    return !this.closed && !this.sock.destroyed && !this.sock.readableEnded && this.sock.writable;
  }

  /** Starts a command (the caller writes it): returns the id clamd's reply will carry. */
  begin(command: Command): number {
    this.command = command;
    this.chunks = [];
    return ++this.seq;
  }

  private onData(d: Buffer): void {
    const c = this.command;
    // bytes nobody asked for (clamd's read timeout on an idle session, or a second reply)
    if (!c) return void this.sock.destroy();
    this.chunks.push(d);
    if (!d.includes(0)) return;
    const all = this.chunks.length === 1 ? d : Buffer.concat(this.chunks);
    const nul = all.indexOf(0);
    this.chunks = [];
    this.command = undefined;
    c.reply(all.toString('latin1', 0, nul), nul + 1 < all.length);
  }

  /** Polite close (zEND). */
  end(): void {
    this.command = undefined;
    if (this.closed) return;
    this.sock.unref();
    this.sock.end(Z_END);
  }

  destroy(): void {
    this.command = undefined;
    this.sock.destroy();
  }
}

export interface ClamdClientOptions {
  /** Idle sessions kept for reuse (LIFO). Default 8; 0: a connection per scan. */
  maxIdle?: number;
  /** How long an idle session is kept, in ms. Default 15 s (clamd's ReadTimeout is 120 s by default). */
  idleMs?: number;
}

/** clamd client with a pool of idle sessions. close() ends them; scans after close() are not pooled. */
export class ClamdClient {
  private readonly idle: Session[] = [];
  private readonly maxIdle: number;
  private readonly idleMs: number;
  private closed = false;
  private sweeper: NodeJS.Timeout | undefined;

  constructor(
    readonly target: ClamdTarget,
    opts: ClamdClientOptions = {},
  ) {
    this.maxIdle = opts.maxIdle ?? 8;
    this.idleMs = opts.idleMs ?? 15_000;
  }

  /** Idle sessions in the pool (for tests and stats). */
  get idleSessions(): number {
    return this.idle.length;
  }

  /**
   * Streams the source to clamd with zINSTREAM and resolves clamd's reply without the session id
   * (`stream: OK`). A function as source can be called a second time for the one retry.
   */
  instream(source: Readable | (() => Readable), timeoutMs: number): Promise<string> {
    const open = typeof source === 'function' ? source : () => source;
    const canRetry = typeof source === 'function';
    return new Promise((resolve, reject) => {
      let settled = false;
      let retried = false;
      let session: Session | undefined;
      let input: Readable | undefined;
      // created only while the writer waits for 'drain': AbortController.abort() builds a DOMException
      // with a stack trace, which showed in profiles when it was done for every scan
      let abort: AbortController | undefined;

      const finish = (err: Error | undefined, text?: string, keep = false) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        abort?.abort();
        input?.destroy();
        if (session) {
          if (keep) this.release(session);
          else session.destroy();
        }
        if (err) reject(err);
        else resolve(text!);
      };
      const timer = setTimeout(
        () => finish(new ClamdError('timeout', `clamd: no verdict within ${timeoutMs} ms`)),
        timeoutMs,
      );

      const attempt = (s: Session, reused: boolean) => {
        session = s;
        let written = false;
        const id = s.begin({
          reply: (raw, extra) => {
            const m = ID_PREFIX.exec(raw);
            const text = (m ? raw.slice(m[0].length) : raw).trim();
            const ours = m !== null && Number(m[1]) === id;
            // OK or FOUND is only this scan's verdict with our id, once clamd has the whole stream (it
            // scans after the terminating chunk); an ERROR (a limit) is an error whenever it comes
            if (!/ERROR$/.test(text) && (!ours || !written))
              return finish(
                new ClamdError(
                  'protocol',
                  `clamd: a reply that is not this scan's verdict: ${raw.slice(0, 80)}`,
                ),
              );
            finish(undefined, text, written && !extra && SESSION_KEPT.test(text));
          },
          closed: (partial, connected, err) => {
            const m = ID_PREFIX.exec(partial);
            if (reused && canRetry && !retried && !(m && Number(m[1]) === id)) {
              // a pooled session clamd had closed: once more on a new connection
              retried = true;
              abort?.abort();
              input?.destroy();
              return attempt(this.connect(), false);
            }
            // clamd may close while we still write (a size limit): its reply, when it came, is the answer
            if (partial) finish(undefined, m ? partial.slice(m[0].length).trim() : partial);
            else if (!connected)
              finish(new ClamdError('connect', `clamd: ${err?.message ?? 'connection failed'}`));
            else finish(new ClamdError('closed', `clamd: connection closed without a verdict`));
          },
        });
        let src: Readable;
        try {
          src = input = open();
        } catch (err) {
          return finish(err as Error);
        }
        const live = () => !settled && session === s;
        const sock = s.sock;
        void (async () => {
          sock.cork();
          try {
            sock.write(Z_INSTREAM);
            for await (const data of src as AsyncIterable<Buffer | string>) {
              if (!live()) return;
              const chunk = typeof data === 'string' ? Buffer.from(data, 'latin1') : data;
              if (!chunk.length) continue;
              const len = Buffer.allocUnsafe(4);
              len.writeUInt32BE(chunk.length);
              sock.write(len);
              if (!sock.write(chunk)) {
                sock.uncork();
                const ac = (abort = new AbortController());
                try {
                  await once(sock, 'drain', { signal: ac.signal });
                } catch {
                  return; // aborted, or the socket failed: its 'close' decides
                } finally {
                  if (abort === ac) abort = undefined;
                }
                if (!live()) return;
                sock.cork();
              }
            }
            if (!live()) return;
            sock.write(LAST_CHUNK);
            written = true;
          } catch (err) {
            // our side failed (spool unreadable): never a verdict
            if (live()) finish(err as Error);
          } finally {
            while (sock.writableCorked) sock.uncork();
          }
        })();
      };

      attempt(...this.acquire());
    });
  }

  /** Ends the idle sessions; sessions in use end when their scan is done. */
  close(): void {
    this.closed = true;
    clearTimeout(this.sweeper);
    this.sweeper = undefined;
    for (const s of this.idle.splice(0)) s.end();
  }

  private connect(): Session {
    return new Session(this.target, (s) => {
      const i = this.idle.indexOf(s);
      if (i >= 0) this.idle.splice(i, 1);
    });
  }

  private acquire(): [Session, boolean] {
    this.sweep();
    for (let s = this.idle.pop(); s; s = this.idle.pop()) {
      if (s.usable) {
        s.sock.ref();
        return [s, true];
      }
      s.destroy();
    }
    return [this.connect(), false];
  }

  private release(s: Session): void {
    if (this.closed || !s.usable || this.idle.length >= this.maxIdle) return s.end();
    s.idleSince = performance.now();
    s.sock.unref();
    this.idle.push(s);
    this.sweeper ??= setTimeout(() => {
      this.sweeper = undefined;
      this.sweep();
    }, this.idleMs).unref();
  }

  /** Ends sessions idle for longer than idleMs (the oldest are at the bottom of the stack). */
  private sweep(): void {
    const cutoff = performance.now() - this.idleMs;
    while (this.idle.length && this.idle[0]!.idleSince <= cutoff) this.idle.shift()!.end();
    if (this.idle.length && !this.sweeper && !this.closed) {
      const wait = Math.max(1, this.idle[0]!.idleSince + this.idleMs - performance.now());
      this.sweeper = setTimeout(() => {
        this.sweeper = undefined;
        this.sweep();
      }, wait).unref();
    }
  }
}

/**
 * Streams `source` to clamd with zINSTREAM and resolves clamd's reply (without the NUL and the session
 * id). With a ClamdClient the scan runs on one of its pooled sessions; with a bare target on a
 * connection of its own.
 */
export function clamdInstream(
  clamd: ClamdTarget | ClamdClient,
  source: Readable | (() => Readable),
  timeoutMs: number,
): Promise<string> {
  const client = clamd instanceof ClamdClient ? clamd : new ClamdClient(clamd, { maxIdle: 0 });
  return client.instream(source, timeoutMs);
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
  /** A ClamdClient (pooled sessions), or a bare target (a connection per scan). */
  clamd: ClamdTarget | ClamdClient;
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
        verdict = classifyClamd(await clamdInstream(deps.clamd, () => msg.stream(), deps.timeoutMs));
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
