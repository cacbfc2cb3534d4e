/**
 * session: one client, from accept to DISCONNECT, in postscreen's order (postscreen.c):
 *   PROXY header from a trusted load balancer (upstream-proxy.ts) -> CONNECT
 *   -> permanent access list: permit = ALLOWLISTED, spliced at once, no test and no cache;
 *      reject = DENYLISTED, then accessAction
 *   -> per-client connection limit -> pass cache: every enabled test still valid = PASS OLD, spliced
 *      at once -> screening slot (preQueueLimit)
 *   -> greet wait with pregreet and DNSBL in parallel (early.ts), actions applied:
 *      drop = 521 and close; enforce = the engine (engine.ts) rejects every RCPT; ignore = log only
 *   -> PASS NEW when every test passed -> spliced to greylist, with the deep tests watching the live
 *      session when they are enabled (deep.ts): a violation under drop closes with 521, under
 *      enforce the engine takes the client over; a pass goes on in the same session.
 * Passes and failures go to the cache with their TTLs. Exports handleClient and ScreenContext.
 */
import type net from 'node:net';
import { normalizeIp, type NetworkList } from '@moat/config';
import type { DnsblResult } from '@moat/dnsbl';
import type { Logger } from '@moat/log';
import type { ClientRecord } from '@moat/reputation';
import type { AccessList } from './access.js';
import type { PassCache } from './cache.js';
import { DeepWatcher, type ClientResult } from './deep.js';
import type { ScreenDnsbl } from './dnsbl.js';
import { greetWait } from './early.js';
import { runEngine, sendAndClose } from './engine.js';
import type { Limits } from './limits.js';
import { escapeBytes, logText, replies, type Action, type DeepTest, type TestName } from './replies.js';
import { splice, type Endpoint, type SpliceOptions } from './splice.js';
import { readProxyHeader } from './upstream-proxy.js';

/** The pass cache as a denylisted client sees it: nothing remembered, nothing recorded. */
const NO_CACHE: Pick<PassCache, 'lookup' | 'pass' | 'fail' | 'dnswl'> = {
  lookup: () => Promise.resolve(undefined),
  pass: () => undefined,
  fail: () => undefined,
  dnswl: () => undefined,
};

export interface ScreenContext {
  hostname: string;
  /** Teaser text; '' = none. */
  teaser: string;
  /** The engine's `220` line text. */
  banner: string;
  greetWaitMs: number;
  greetAction: Action;
  greetTtlMs: number;
  dnsbl?: ScreenDnsbl;
  dnsblAction: Action;
  dnsblMinTtlMs: number;
  accessAction: Action;
  deep: { test: DeepTest; action: Action; ttlMs: number }[];
  forbidden: ReadonlySet<string>;
  commandCountLimit: number;
  commandTimeLimitMs: number;
  proxy?: { peers: NetworkList; timeoutMs: number };
  access: AccessList;
  limits: Limits;
  cache: PassCache;
  splice: SpliceOptions;
  logger: Logger;
}

interface Failure {
  test: TestName | 'access';
  reply: string;
}

function valid(record: ClientRecord | undefined, test: string, now: number): boolean {
  const p = record?.passes[test];
  return p !== undefined && p.expiresAt > now;
}

const STRENGTH: Record<Action, number> = { ignore: 0, enforce: 1, drop: 2 };

/** Everything about one client; resolves when the client is gone. */
export async function handleClient(ctx: ScreenContext, client: net.Socket): Promise<void> {
  client.on('error', () => undefined);
  const peer = normalizeIp(client.remoteAddress ?? '');
  let source: Endpoint = { address: peer, port: client.remotePort ?? 0 };
  let destination: Endpoint = {
    address: normalizeIp(client.localAddress ?? ''),
    port: client.localPort ?? 0,
  };
  let initial: Buffer | undefined;
  if (ctx.proxy && ctx.proxy.peers.has(peer)) {
    try {
      const h = await readProxyHeader(client, ctx.proxy.timeoutMs);
      if (h.addresses.source) source = h.addresses.source;
      if (h.addresses.destination) destination = h.addresses.destination;
      if (h.rest.length > 0) initial = h.rest;
    } catch (err) {
      ctx.logger.warn(
        { peer, port: source.port, err: (err as Error).message },
        `warning: haproxy read: ${(err as Error).message} from [${peer}]:${source.port}`,
      );
      client.destroy();
      return;
    }
  }
  const ip = source.address;
  const who = `[${ip}]:${source.port}`;
  const fields = { client: ip, port: source.port };
  const log = ctx.logger;
  const started = Date.now();
  log.info(fields, logText.connect(who, `[${destination.address}]:${destination.port}`));

  const spliceNow = async (
    counted: boolean,
    watcher?: DeepWatcher,
    onDeep?: (r: ClientResult) => 'forward' | 'stop',
  ) => {
    const outcome = await splice(
      { client, source, destination, ...(initial ? { initial } : {}), counted, watcher, onDeep },
      ctx.splice,
    );
    // a handed-over client is greylist's now: it logs the rest of the session (postscreen does the same)
    if (outcome !== 'taken' && outcome !== 'handed')
      log.info({ ...fields, outcome }, logText.disconnect(who));
    return outcome;
  };

  const access = ctx.access.check(ip);
  // a client on the permanent denylist never uses the pass cache: nothing it did is remembered, and
  // nothing remembered of it spares it a test (postscreen: the permanent lists bypass the cache)
  const cache: Pick<PassCache, 'lookup' | 'pass' | 'fail' | 'dnswl'> =
    access === 'reject' ? NO_CACHE : ctx.cache;
  if (access === 'permit') {
    log.info(fields, logText.allowlisted(who));
    await spliceNow(false);
    return;
  }
  if (!ctx.limits.openClient(ip)) {
    log.info(fields, logText.tooManyConnections(who));
    sendAndClose(client, replies.tooManyConnections + '\r\n');
    return;
  }
  try {
    await screenClient();
  } finally {
    ctx.limits.closeClient(ip);
  }

  async function screenClient(): Promise<void> {
    const failures: Failure[] = [];
    let failed = access === 'reject';
    if (access === 'reject') {
      log.info({ ...fields, action: ctx.accessAction }, logText.denylisted(who));
      if (ctx.accessAction === 'drop') return drop(replies.access.drop);
      if (ctx.accessAction === 'enforce') failures.push({ test: 'access', reply: replies.access.enforce });
    }
    const record = await cache.lookup(ip);
    if (client.destroyed) return;
    const now = Date.now();
    const pregreetTodo = ctx.greetWaitMs > 0 && !valid(record, 'pregreet', now);
    const dnsblTodo = ctx.dnsbl !== undefined && !valid(record, 'dnsbl', now);
    let deepTodo = ctx.deep.filter((d) => !valid(record, d.test, now));
    if (!failed && !pregreetTodo && !dnsblTodo) {
      if (deepTodo.length === 0) log.info(fields, logText.passOld(who));
      await spliceWatched(deepTodo, true);
      return;
    }
    if (!ctx.limits.enterScreening()) {
      log.info(fields, logText.screeningBusy(who));
      sendAndClose(client, replies.screeningBusy + '\r\n');
      return;
    }
    let screening = true;
    const leave = () => {
      if (screening) ctx.limits.leaveScreening();
      screening = false;
    };
    try {
      const early = await greetWait(client, {
        teaser: ctx.teaser,
        waitMs: ctx.greetWaitMs,
        pregreet: pregreetTodo,
        // only a pregreet test that is due may end the wait early: with it passed already, early bytes
        // are kept for greylist, and the wait still ends only when the DNSBL answers are in
        dropOnPregreet: pregreetTodo && ctx.greetAction === 'drop',
        ...(dnsblTodo ? { dnsbl: ctx.dnsbl } : {}),
        ip,
      });
      if (early.pregreet && pregreetTodo) {
        const p = early.pregreet;
        log.info(
          { ...fields, count: early.firstCount, after: early.firstAfterMs / 1000, action: ctx.greetAction },
          logText.pregreet(early.firstCount, early.firstAfterMs, who, escapePregreet(p, early.firstCount)),
        );
      }
      if (early.hangup) {
        log.info(fields, logText.hangup(early.elapsedMs, who, 'tests before SMTP handshake'));
        return;
      }
      const passed: { test: TestName; ttlMs: number }[] = [];
      if (pregreetTodo) {
        if (early.pregreet) {
          failed = true;
          cache.fail(ip, 'pregreet');
          if (ctx.greetAction === 'drop') return drop(replies.pregreet.drop);
          if (ctx.greetAction === 'enforce')
            failures.push({ test: 'pregreet', reply: replies.pregreet.enforce });
        } else if (!early.dnswl) {
          // (a client DNSWL trust let through early sat through no wait: its pass gets the DNS TTL below)
          passed.push({ test: 'pregreet', ttlMs: ctx.greetTtlMs });
        }
      }
      let dnswlTtl: number | undefined;
      if (dnsblTodo) {
        const r: DnsblResult = early.dnsbl ?? {
          ip,
          score: 0,
          contributions: [],
          ttlMs: ctx.dnsblMinTtlMs,
          errors: [],
          broken: [],
          pending: [],
          complete: false,
        };
        const verdict = ctx.dnsbl!.judge(r);
        // every answer in, none an error and no zone out of use: the answers' TTL; otherwise the pass is
        // short, so the client is looked up again soon (a broken zone may be back in use by then)
        const ttlMs =
          r.complete && r.errors.length === 0 && r.broken.length === 0 ? r.ttlMs : ctx.dnsblMinTtlMs;
        if (verdict === 'block') {
          log.info(
            { ...fields, score: r.score, listedBy: r.listedBy, action: ctx.dnsblAction },
            logText.dnsblRank(r.score, who),
          );
          failed = true;
          cache.fail(ip, 'dnsbl');
          if (ctx.dnsblAction === 'drop') return drop(replies.dnsbl(ip, r.listedBy, 'drop'));
          if (ctx.dnsblAction === 'enforce') {
            failures.push({ test: 'dnsbl', reply: replies.dnsbl(ip, r.listedBy, 'enforce') });
          }
        } else {
          passed.push({ test: 'dnsbl', ttlMs });
          if (verdict === 'allowlist' && !failed) {
            dnswlTtl = r.ttlMs;
            cache.dnswl(ip, r.score, r.ttlMs);
          }
        }
      }
      if (dnswlTtl !== undefined) {
        // DNSWL trust: every test still to run passes, with the DNS answer's TTL
        for (const t of ['pregreet', ...deepTodo.map((d) => d.test)] as TestName[]) {
          if (!passed.some((p) => p.test === t) && (t !== 'pregreet' || pregreetTodo)) {
            passed.push({ test: t, ttlMs: dnswlTtl });
          }
        }
        deepTodo = [];
      }
      for (const p of passed) cache.pass(ip, p.test, p.ttlMs);
      if (failures.length > 0) {
        const f = failures[failures.length - 1]!;
        const outcome = await runEngine(client, {
          hostname: ctx.hostname,
          who,
          rcptReply: f.reply,
          commandCountLimit: ctx.commandCountLimit,
          commandTimeLimitMs: ctx.commandTimeLimitMs,
          logger: log,
          fields,
          ...(early.pregreet ? {} : { greeting: ctx.banner }),
          ...(early.pregreet ? { initial: early.pregreet } : {}),
        });
        if (outcome === 'hangup') {
          log.info(fields, logText.hangup(Date.now() - started, who, 'tests after SMTP handshake'));
        }
        log.info({ ...fields, outcome }, logText.disconnect(who));
        return;
      }
      const allPassed = !failed;
      if (allPassed && deepTodo.length === 0) log.info(fields, logText.passNew(who));
      if (early.pregreet) initial = initial ? Buffer.concat([initial, early.pregreet]) : early.pregreet;
      leave();
      await spliceWatched(deepTodo, allPassed);
    } finally {
      leave();
    }
  }

  function drop(reply: string): void {
    sendAndClose(client, reply + '\r\n');
    log.info({ ...fields, reply }, logText.disconnect(who));
  }

  /** Splice, watching the deep tests still to run; `clean`: nothing failed so far (PASS NEW at the end). */
  async function spliceWatched(todo: ScreenContext['deep'], clean: boolean): Promise<void> {
    if (todo.length === 0) {
      await spliceNow(true);
      return;
    }
    const watcher = new DeepWatcher({ tests: new Set(todo.map((d) => d.test)), forbidden: ctx.forbidden });
    let takeover: { action: Action; test: DeepTest; tail: Buffer } | undefined;
    const onDeep = (r: ClientResult): 'forward' | 'stop' => {
      for (const t of r.passed) cache.pass(ip, t, todo.find((d) => d.test === t)!.ttlMs);
      let worst: { action: Action; test: DeepTest } | undefined;
      for (const v of r.violations) {
        const d = todo.find((x) => x.test === v.test)!;
        clean = false;
        const text = escapePregreet(v.text, v.text.length);
        const f = { ...fields, test: v.test, after: v.after, action: d.action };
        if (v.test === 'pipelining') log.info(f, logText.pipelining(who, v.after, text));
        else if (v.test === 'non_smtp_command') log.info(f, logText.nonSmtp(who, v.after, text));
        else log.info(f, logText.bareNewline(who, v.after));
        cache.fail(ip, v.test);
        if (!worst || STRENGTH[d.action] > STRENGTH[worst.action]) worst = { action: d.action, test: v.test };
      }
      if (r.passed.length > 0 && clean && r.violations.length === 0) log.info(fields, logText.passNew(who));
      if (!worst || worst.action === 'ignore') return 'forward';
      takeover = { ...worst, tail: r.tail };
      return 'stop';
    };
    const outcome = await spliceNow(true, watcher, onDeep);
    if (outcome !== 'taken' || !takeover) return;
    const t: { action: Action; test: DeepTest; tail: Buffer } = takeover;
    if (t.action === 'drop') {
      drop(replies[t.test].drop);
      return;
    }
    const owed = watcher
      .owedLines()
      .map((l) => l + '\r\n')
      .join('');
    const result = await runEngine(client, {
      hostname: ctx.hostname,
      who,
      rcptReply: replies[t.test].enforce,
      commandCountLimit: ctx.commandCountLimit,
      commandTimeLimitMs: ctx.commandTimeLimitMs,
      logger: log,
      fields,
      helo: watcher.helo,
      ...(watcher.from !== undefined ? { from: watcher.from } : {}),
      proto: watcher.proto,
      ...(watcher.bannerOwed ? { greeting: ctx.banner } : {}),
      initial: Buffer.concat([Buffer.from(owed, 'latin1'), t.tail]),
    });
    if (result === 'hangup') {
      log.info(fields, logText.hangup(Date.now() - started, who, 'tests after SMTP handshake'));
    }
    log.info({ ...fields, outcome: result }, logText.disconnect(who));
  }
}

function escapePregreet(buf: Buffer, firstCount: number): string {
  return escapeBytes(buf.subarray(0, firstCount), 100);
}
