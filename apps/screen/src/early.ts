/**
 * early: the tests before the greeting (postscreen_early.c). Sends the `220-` teaser (when the pregreet
 * test is to run and a banner is set), then waits greetWait while, in parallel, the pregreet test
 * watches for bytes and the DNSBL lookups run. The wait ends early when nothing is pending any more:
 * no pregreet test to run and every DNSBL answer in, or DNSWL trust reached (score at or below the
 * allowlist threshold, partial scores included); at once on a pregreet under `drop`; and on hangup.
 *
 * One deadline timer per client; the bytes a pregreeter sent are kept (up to MAX_PREGREET) so that
 * under `ignore` they reach greylist instead of being lost. Exports greetWait and EarlyResult.
 */
import type net from 'node:net';
import type { DnsblResult } from '@moat/dnsbl';
import type { ScreenDnsbl } from './dnsbl.js';

const MAX_PREGREET = 64 * 1024;

export interface EarlyOptions {
  /** `220-` teaser text; '' = none. */
  teaser: string;
  waitMs: number;
  pregreet: boolean;
  /** Stop at the first pregreet byte (greetAction drop). */
  dropOnPregreet: boolean;
  dnsbl?: ScreenDnsbl;
  ip: string;
}

export interface EarlyResult {
  hangup: boolean;
  /** Everything the client sent before the wait ended. */
  pregreet?: Buffer;
  /** Size of the first read and when it came (ms after the start), for the PREGREET line. */
  firstCount: number;
  firstAfterMs: number;
  /** The DNSBL result as it stood when the wait ended (undefined: not run). */
  dnsbl?: DnsblResult;
  /** DNSWL trust reached. */
  dnswl: boolean;
  elapsedMs: number;
}

export function greetWait(client: net.Socket, o: EarlyOptions): Promise<EarlyResult> {
  const started = Date.now();
  const r: EarlyResult = { hangup: false, firstCount: 0, firstAfterMs: 0, dnswl: false, elapsedMs: 0 };
  if (o.pregreet && o.teaser) client.write(`220-${o.teaser}\r\n`);
  return new Promise((resolve) => {
    let finished = false;
    const finish = () => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      client.removeListener('data', onData);
      client.removeListener('close', onClose);
      client.pause();
      r.elapsedMs = Date.now() - started;
      resolve(r);
    };
    const onData = (chunk: Buffer) => {
      if (!r.pregreet) {
        r.pregreet = chunk;
        r.firstCount = chunk.length;
        r.firstAfterMs = Date.now() - started;
        if (o.dropOnPregreet) return finish();
      } else {
        r.pregreet = Buffer.concat([r.pregreet, chunk]);
        if (r.pregreet.length > MAX_PREGREET) client.pause();
      }
    };
    const onClose = () => {
      r.hangup = true;
      finish();
    };
    const timer = setTimeout(finish, o.waitMs);
    client.on('data', onData);
    client.once('close', onClose);
    client.resume();
    const d = o.dnsbl;
    if (d) {
      const seen = (partial: DnsblResult) => {
        r.dnsbl = partial;
        if (d.judge(partial) === 'allowlist') {
          r.dnswl = true;
          finish();
        } else if (partial.complete && !o.pregreet) finish();
      };
      void d.checker.score(o.ip, { deadline: started + o.waitMs, onUpdate: seen }).then((final) => {
        if (!finished) seen(final);
      });
    } else if (!o.pregreet) {
      finish();
    }
  });
}
