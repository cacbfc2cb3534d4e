/**
 * dnsbl: the glue between screen's settings and @moat/dnsbl. Builds one DnsblChecker for the process
 * (screen.dnsblSites verbatim, through dns.servers, dnsblTimeout, TTLs clamped to
 * dnsblMinTtl/dnsblMaxTtl, dnsblReplyMap), runs the zones' test-point self-tests at start and every
 * dnsblTestInterval (a zone that fails them, or answers an error code, is out of use and logged by
 * the checker in dnsblog's words), and turns a score into postscreen's verdict.
 * Every zone's state (ok / broken with its reason / untested) is also exposed in
 * <dataDir>/screen/dnsbl-status.json, rewritten every 10 s (atomically, by rename), for monitoring and
 * the quarantine UI; secret zone names appear there only by their public names.
 * Exports createDnsbl and ScreenDnsbl; undefined when no sites are configured (the test is off).
 */
import fs from 'node:fs';
import path from 'node:path';
import type { MoatConfig } from '@moat/config';
import { DnsblChecker, verdict, type DnsblResult, type Verdict } from '@moat/dnsbl';
import type { Logger } from '@moat/log';

export interface ScreenDnsbl {
  checker: DnsblChecker;
  /** The result's meaning under dnsblThreshold / dnsblAllowlistThreshold. */
  judge(r: DnsblResult): Verdict;
  stop(): void;
}

export function createDnsbl(config: Readonly<MoatConfig>, logger: Logger): ScreenDnsbl | undefined {
  const c = config.screen;
  if (c.dnsblSites.length === 0) return undefined;
  const checker = new DnsblChecker({
    sites: c.dnsblSites,
    servers: config.dns.servers,
    timeoutMs: c.dnsblTimeout,
    minTtlMs: c.dnsblMinTtl,
    maxTtlMs: c.dnsblMaxTtl,
    replyMap: c.dnsblReplyMap,
    log: (level, msg, fields) => logger[level](fields ?? {}, msg),
  });
  const stopTests = checker.startPeriodicSelfTest(c.dnsblTestInterval);
  const statusFile = path.join(config.dataDir, 'screen', 'dnsbl-status.json');
  const writeStatus = () => {
    try {
      fs.mkdirSync(path.dirname(statusFile), { recursive: true });
      const zones = checker.status().map(({ zone: _secret, ...shown }) => shown);
      const tmp = `${statusFile}.${process.pid}.tmp`;
      fs.writeFileSync(
        tmp,
        JSON.stringify({ updated: new Date().toISOString(), pid: process.pid, zones }, null, 2),
      );
      fs.renameSync(tmp, statusFile);
    } catch (err) {
      logger.warn({ file: statusFile, err: (err as Error).message }, 'dnsbl status not written');
    }
  };
  const statusTimer = setInterval(writeStatus, 10_000);
  statusTimer.unref();
  setTimeout(writeStatus, 1000).unref();
  const thresholds = {
    threshold: c.dnsblThreshold,
    ...(c.dnsblAllowlistThreshold < 0 ? { allowlistThreshold: c.dnsblAllowlistThreshold } : {}),
  };
  return {
    checker,
    judge: (r) => verdict(r.score, thresholds),
    stop: () => {
      stopTests();
      clearInterval(statusTimer);
    },
  };
}
