import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from './load.js';
import { envName } from './env.js';
import { printConfig } from './print.js';

function tmpFile(text: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moat-config-'));
  const file = path.join(dir, 'moat.yaml');
  fs.writeFileSync(file, text);
  return file;
}

describe('loadConfig', () => {
  it('uses built-in defaults when the file is absent, with derived next hops', () => {
    const { config, fileExists } = loadConfig({ file: '/nonexistent/moat.yaml', env: {} });
    expect(fileExists).toBe(false);
    expect(config.screen.listen).toBe('0.0.0.0:2525');
    expect(config.screen.next).toEqual(['127.0.0.1:10023']);
    expect(config.greylist.next).toEqual(['127.0.0.1:10024']);
    expect(config.filter.next).toEqual(['127.0.0.1:10025']);
    expect(config.filter.quarantine).toEqual(['127.0.0.1:10026']);
    expect(config.greylist.messageSizeLimit).toBe(50 * 1024 * 1024);
    expect(config.greylist.nextTimeout).toBe(100_000);
    expect(config.delivery.maildir).toBe(path.resolve('./data/mail'));
    expect(config.screen.handover).toBe(true);
    expect(config.greylist.handoverSocket).toBe(path.resolve('./data/run/greylist.sock'));
    expect(Object.isFrozen(config.greylist)).toBe(true);
  });

  it("puts greylist's handover socket under dataDir unless set, and lets screen splice instead", () => {
    const moved = loadConfig({ file: '/nonexistent/moat.yaml', env: { MOAT_DATA_DIR: '/srv/moat' } }).config;
    expect(moved.greylist.handoverSocket).toBe('/srv/moat/run/greylist.sock');
    const set = loadConfig({
      file: '/nonexistent/moat.yaml',
      env: { MOAT_GREYLIST_HANDOVER_SOCKET: '/run/moat/g1.sock', MOAT_SCREEN_HANDOVER: 'false' },
    }).config;
    expect(set.greylist.handoverSocket).toBe('/run/moat/g1.sock');
    expect(set.screen.handover).toBe(false);
  });

  it('refuses a handover socket path longer than a Unix socket can be bound at, naming the key', () => {
    const deep = `/srv/${'d'.repeat(100)}`;
    expect(() => loadConfig({ file: '/nonexistent/moat.yaml', env: { MOAT_DATA_DIR: deep } })).toThrow(
      /greylist\.handoverSocket: \/srv\/d+\/run\/greylist\.sock is 123 bytes; a Unix socket path can have at most 107/,
    );
    // without handover nothing binds it
    const off = loadConfig({
      file: '/nonexistent/moat.yaml',
      env: { MOAT_DATA_DIR: deep, MOAT_SCREEN_HANDOVER: 'false' },
    });
    expect(off.config.screen.handover).toBe(false);
  });

  it('keeps an internationalized local domain as its A-label, however it is written', () => {
    const load = (d: string) =>
      loadConfig({ file: '/nonexistent/moat.yaml', env: { MOAT_DOMAINS: d } }).config.domains;
    expect(load('b\u00fccher.test, XN--BCHER-KVA.test, Example.TEST')).toEqual([
      'xn--bcher-kva.test',
      'xn--bcher-kva.test',
      'example.test',
    ]);
    expect(() => load('exa mple.test')).toThrow(/domains\.0: expected a domain like example\.test/);
  });

  it('refuses settings that would make a timer spin or a check misbehave, naming the key', () => {
    const load = (env: Record<string, string>) => loadConfig({ file: '/nonexistent/moat.yaml', env });
    expect(() => load({ MOAT_GREYLIST_MAINTENANCE_INTERVAL: '0' })).toThrow(
      /greylist\.maintenanceInterval: expected at least 1s, got "0"/,
    );
    expect(() => load({ MOAT_SCREEN_DNSBL_MIN_TTL: '2h' })).toThrow(
      /screen\.dnsblMinTtl: must not be above screen\.dnsblMaxTtl \(1h\)/,
    );
    expect(() => load({ MOAT_FILTER_SPAM_MAX_SIZE: '0' })).toThrow(/filter\.spamMaxSize: /);
    expect(() => load({ MOAT_SCREEN_GREET_WAIT: '0' })).toThrow(/screen\.greetWait: expected at least 100ms/);
  });

  it('lets spamd be off, never clamd (no message passes without a virus scan)', () => {
    const load = (env: Record<string, string>) => loadConfig({ file: '/nonexistent/moat.yaml', env });
    expect(load({ MOAT_FILTER_SPAMD: 'off' }).config.filter.spamd).toBe('off');
    expect(() => load({ MOAT_FILTER_CLAMD: 'off' })).toThrow(
      /filter\.clamd: expected host:port, a socket path or managed \(clamd\)/,
    );
  });

  it('reads the file and lets MOAT_* variables override any key', () => {
    const file = tmpFile(
      'hostname: mx.example.test\ndomains: [example.test]\ngreylist:\n  listen: 127.0.0.1:20023\n',
    );
    const { config, overrides } = loadConfig({
      file,
      env: {
        MOAT_DOMAINS: 'a.test, b.test',
        MOAT_GREYLIST_NEXT_TIMEOUT: '7s',
        MOAT_GREYLIST_RECIPIENT_LIMIT: '5',
      },
    });
    expect(config.hostname).toBe('mx.example.test');
    expect(config.domains).toEqual(['a.test', 'b.test']);
    expect(config.greylist.nextTimeout).toBe(7000);
    expect(config.greylist.recipientLimit).toBe(5);
    expect(config.screen.next).toEqual(['127.0.0.1:20023']);
    expect(overrides.map((o) => o.variable).sort()).toEqual([
      'MOAT_DOMAINS',
      'MOAT_GREYLIST_NEXT_TIMEOUT',
      'MOAT_GREYLIST_RECIPIENT_LIMIT',
    ]);
  });

  it('derives the variable names from key paths', () => {
    expect(envName(['screen', 'dnsblSites'])).toBe('MOAT_SCREEN_DNSBL_SITES');
    expect(envName(['dataDir'])).toBe('MOAT_DATA_DIR');
  });

  it('names the key and the problem, and the variable it came from', () => {
    const file = tmpFile('greylist:\n  nextTimeout: soon\n  bogus: 1\n');
    let err: unknown;
    try {
      loadConfig({ file, env: { MOAT_SCREEN_LISTEN: 'nowhere' } });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    const problems = (err as ConfigError).problems.join('\n');
    expect(problems).toContain('greylist.nextTimeout: expected a duration like 300s, 5m or 1d, got "soon"');
    expect(problems).toContain('greylist.bogus: unknown key');
    expect(problems).toContain(
      'screen.listen: expected host:port, e.g. 127.0.0.1:10024 (from MOAT_SCREEN_LISTEN)',
    );
  });

  it('refuses a timer delay longer than a Node timer holds (24d), naming the key and variable', () => {
    const problemsOf = (env: NodeJS.ProcessEnv) => {
      try {
        loadConfig({ file: '/nonexistent/moat.yaml', env });
      } catch (e) {
        return (e as ConfigError).problems;
      }
      return [];
    };
    // every key used as a setTimeout/setInterval/socket timeout delay
    const timers = [
      'dns.timeout',
      'screen.nextConnectTimeout',
      'screen.greetWait',
      'screen.dnsblTimeout',
      'screen.dnsblTestInterval',
      'screen.commandTimeLimit',
      'screen.cacheCleanupInterval',
      'screen.upstreamProxyTimeout',
      'greylist.idleTimeout',
      'greylist.storeTimeout',
      'greylist.maintenanceInterval',
      'greylist.nextConnectTimeout',
      'greylist.nextTimeout',
      'filter.clamdTimeout',
      'filter.spamdTimeout',
      'filter.nextTimeout',
      'delivery.queueRunDelay',
      'quarantine.nextTimeout',
    ];
    const env = Object.fromEntries(timers.map((k) => [envName(k.split('.')), '30d']));
    expect(problemsOf(env).sort()).toEqual(
      timers.map((k) => `${k}: expected at most 24d, got "30d" (from ${envName(k.split('.'))})`).sort(),
    );
    expect(
      problemsOf({ MOAT_GREYLIST_IDLE_TIMEOUT: '24d', MOAT_GREYLIST_MAINTENANCE_INTERVAL: '24d' }),
    ).toEqual([]);
    // lifetimes only used in arithmetic may be longer
    const long = loadConfig({
      file: '/nonexistent/moat.yaml',
      env: {
        MOAT_GREYLIST_MAX_AGE: '60d',
        MOAT_SCREEN_PIPELINING_TTL: '90d',
        MOAT_SCREEN_CACHE_RETENTION: '30d',
      },
    }).config;
    expect(long.greylist.maxAge).toBe(60 * 86_400_000);
    expect(long.screen.pipeliningTtl).toBe(90 * 86_400_000);
    expect(loadConfig({ file: '/nonexistent/moat.yaml', env: {} }).config.greylist.maxAge).toBe(
      35 * 86_400_000,
    );
  });

  it('refuses a greylist.messageSizeLimit of 0 or less, naming the key and variable', () => {
    expect(() => loadConfig({ file: tmpFile('greylist:\n  messageSizeLimit: 0\n'), env: {} })).toThrow(
      'greylist.messageSizeLimit: expected at least 1 byte (0 is not "unlimited" here), got 0',
    );
    expect(() =>
      loadConfig({ file: '/nonexistent/moat.yaml', env: { MOAT_GREYLIST_MESSAGE_SIZE_LIMIT: '0MB' } }),
    ).toThrow(
      'greylist.messageSizeLimit: expected at least 1 byte (0 is not "unlimited" here), got "0MB" (from MOAT_GREYLIST_MESSAGE_SIZE_LIMIT)',
    );
    expect(() => loadConfig({ file: tmpFile('greylist:\n  messageSizeLimit: -1\n'), env: {} })).toThrow(
      'greylist.messageSizeLimit: expected a size like 52428800, 50MB or 512k, got -1',
    );
    const one = loadConfig({
      file: '/nonexistent/moat.yaml',
      env: { MOAT_GREYLIST_MESSAGE_SIZE_LIMIT: '1' },
    });
    expect(one.config.greylist.messageSizeLimit).toBe(1);
    // 0 keeps its plain meaning where it has one: every message spooled to a file
    const spool = loadConfig({
      file: '/nonexistent/moat.yaml',
      env: { MOAT_FILTER_SPOOL_MEMORY_LIMIT: '0' },
    });
    expect(spool.config.filter.spoolMemoryLimit).toBe(0);
  });

  it('refuses an empty peers list (it would open the port to everyone), naming the key and variable', () => {
    const empty = 'must list at least one address; loopback is 127.0.0.1/32';
    const keys = [
      'greylist.peers',
      'greylist.policyPeers',
      'filter.peers',
      'delivery.peers',
      'quarantine.peers',
    ];
    let err: unknown;
    try {
      // an empty variable is an empty list
      loadConfig({
        file: '/nonexistent/moat.yaml',
        env: Object.fromEntries(keys.map((k) => [envName(k.split('.')), ''])),
      });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).problems.sort()).toEqual(
      keys.map((k) => `${k}: ${empty} (from ${envName(k.split('.'))})`).sort(),
    );
    expect(() => loadConfig({ file: tmpFile('delivery:\n  peers: []\n'), env: {} })).toThrow(
      `delivery.peers: ${empty}`,
    );
    // lists where empty has a meaning stay accepted
    const { config } = loadConfig({
      file: '/nonexistent/moat.yaml',
      env: {
        MOAT_DNS_SERVERS: '',
        MOAT_SCREEN_DNSBL_SITES: '',
        MOAT_SCREEN_ACCESS_LIST: '',
        MOAT_MYNETWORKS: '',
        MOAT_GREYLIST_PROXY_PEERS: '',
        MOAT_SCREEN_UPSTREAM_PROXY_PEERS: '',
        MOAT_DELIVERY_PEERS: '127.0.0.1/32',
      },
    });
    expect(config.dns.servers).toEqual([]);
    expect(config.screen.dnsblSites).toEqual([]);
    expect(config.screen.accessList).toEqual([]);
    expect(config.mynetworks).toEqual([]);
    expect(config.greylist.proxyPeers).toEqual(config.greylist.peers);
    expect(config.delivery.peers).toEqual(['127.0.0.1/32']);
  });

  it('names the variable of a bad list element', () => {
    let err: unknown;
    try {
      loadConfig({
        file: '/nonexistent/moat.yaml',
        env: {
          MOAT_GREYLIST_PEERS: '127.0.0.1,bogus',
          MOAT_DOMAINS: 'example.test,bad_domain',
          MOAT_GREYLIST_NEXT: '127.0.0.1:10024,nowhere',
          MOAT_DNS_SERVERS: 'nowhere',
        },
      });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).problems.sort()).toEqual([
      'dns.servers.0: expected host:port, e.g. 127.0.0.1:10024 (from MOAT_DNS_SERVERS)',
      'domains.1: expected a domain like example.test (from MOAT_DOMAINS)',
      'greylist.next.1: expected host:port, e.g. 127.0.0.1:10024 (from MOAT_GREYLIST_NEXT)',
      'greylist.peers.1: expected an address or a network like 127.0.0.0/8 (from MOAT_GREYLIST_PEERS)',
    ]);
    // the same element from the file names no variable
    expect(() => loadConfig({ file: tmpFile('greylist:\n  peers: [127.0.0.1, bogus]\n'), env: {} })).toThrow(
      /greylist\.peers\.1: expected an address or a network like 127\.0\.0\.0\/8$/,
    );
  });

  it('refuses a file named in MOAT_CONFIG that is not there; only the default may be absent', () => {
    expect(() => loadConfig({ env: { MOAT_CONFIG: '/nonexistent.yaml' } })).toThrow(
      /\/nonexistent\.yaml \(from MOAT_CONFIG\): cannot read it: ENOENT/,
    );
    let err: unknown;
    try {
      loadConfig({ env: { MOAT_CONFIG: '/nonexistent.yaml' } });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    // one that is there is read
    const file = tmpFile('hostname: named.example.test\n');
    expect(loadConfig({ env: { MOAT_CONFIG: file } }).config.hostname).toBe('named.example.test');
    // a folder is no file either
    expect(() => loadConfig({ env: { MOAT_CONFIG: path.dirname(file) } })).toThrow(/cannot read it: EISDIR/);
    // the default ./moat.yaml, absent here: built-in defaults, as an empty MOAT_CONFIG
    const cwd = process.cwd();
    process.chdir(fs.mkdtempSync(path.join(os.tmpdir(), 'moat-config-')));
    try {
      expect(loadConfig({ env: {} }).fileExists).toBe(false);
      expect(loadConfig({ env: { MOAT_CONFIG: '' } }).fileExists).toBe(false);
    } finally {
      process.chdir(cwd);
    }
  });

  it('refuses a MOAT_ variable that names no key, except those Moat reads for other purposes', () => {
    let err: unknown;
    try {
      loadConfig({
        file: '/nonexistent/moat.yaml',
        env: { MOAT_SCREEN_LISTN: '127.0.0.1:2525', MOAT_SCREEN: 'x', MOAT_GREYLIST_DELAY: '60s' },
      });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).problems).toEqual([
      expect.stringMatching(/^MOAT_SCREEN: not a configuration key/),
      expect.stringMatching(
        /^MOAT_SCREEN_LISTN: not a configuration key \(did you mean MOAT_SCREEN_LISTEN\b/,
      ),
    ]);
    const { config } = loadConfig({
      file: '/nonexistent/moat.yaml',
      env: {
        MOAT_CONFIG: '/nonexistent.yaml',
        MOAT_DAEMONS_STATE: '/tmp/state',
        MOAT_TEST_CLAMD: '127.0.0.1:3310',
        MOAT_TEST_RBLDNSD_DIR: '/tmp/rbldnsd',
        MOAT_BENCH_CONNECTIONS: '32',
        MOAT_FILTER_DESTINIES_VIRUS: 'reject',
        MOAT_FILTER_POLICY_BANKS: '{}',
        MOAT_GREYLIST_DELAY: '60s',
      },
    });
    expect(config.greylist.delay).toBe(60_000);
    expect(config.filter.destinies.virus).toBe('reject');
  });

  it("validates greylist.trustScreenTests against screen's test names", () => {
    expect(() =>
      loadConfig({
        file: '/nonexistent/moat.yaml',
        env: { MOAT_GREYLIST_TRUST_SCREEN_TESTS: 'pipelining,non_smtp' },
      }),
    ).toThrow(
      /greylist\.trustScreenTests\.1: .*"pregreet"\|"dnsbl"\|"pipelining"\|"non_smtp_command"\|"bare_newline" \(from MOAT_GREYLIST_TRUST_SCREEN_TESTS\)/,
    );
    const { config } = loadConfig({
      file: '/nonexistent/moat.yaml',
      env: { MOAT_GREYLIST_TRUST_SCREEN_TESTS: 'pipelining,non_smtp_command,bare_newline' },
    });
    expect(config.greylist.trustScreenTests).toEqual(['pipelining', 'non_smtp_command', 'bare_newline']);
  });

  it('rejects YAML that is not a mapping', () => {
    expect(() => loadConfig({ file: tmpFile('- a\n- b\n'), env: {} })).toThrow(/expected a mapping/);
  });

  it('masks a DQS key and reply-mapped zones in dnsblSites and dnsblReplyMap, and a URL password holding @', () => {
    const { config } = loadConfig({
      file: '/nonexistent/moat.yaml',
      env: {
        MOAT_SCREEN_DNSBL_SITES:
          'ABCDEFSECRETKEY.zen.dq.spamhaus.net=127.0.0.[2..11]*3, hidden.lists.example.net*2, list.dnswl.org=127.0.[0..255].[1..3]*-4',
        MOAT_SCREEN_DNSBL_REPLY_MAP:
          'ABCDEFSECRETKEY.zen.dq.spamhaus.net=zen.spamhaus.org,hidden.lists.example.net=lists.example',
        MOAT_STORE: 'redis://user:p@ss@127.0.0.1:6379/0',
      },
    });
    const text = printConfig(config);
    expect(text).not.toMatch(/ABCDEFSECRETKEY|hidden|p@ss|ss@/);
    expect(text).toContain('********.zen.dq.spamhaus.net=127.0.0.[2..11]*3');
    expect(text).toContain('********.example.net*2');
    expect(text).toContain('list.dnswl.org=127.0.[0..255].[1..3]*-4');
    expect(text).toContain('"********.zen.dq.spamhaus.net": zen.spamhaus.org');
    expect(text).toContain('"********.example.net": lists.example');
    expect(text).toContain('store: redis://user:********@127.0.0.1:6379/0');
    // the effective config itself keeps the real names
    expect(config.screen.dnsblSites[0]).toBe('ABCDEFSECRETKEY.zen.dq.spamhaus.net=127.0.0.[2..11]*3');
  });

  it('prints the effective config with units and secrets masked', () => {
    const { config } = loadConfig({ file: '/nonexistent', env: {} });
    const text = printConfig({ ...config, dataDir: 'redis://u:hunter2@host/0' } as typeof config);
    expect(text).toContain('nextTimeout: 100s');
    expect(text).toContain('redis://u:********@host/0');
    expect(text).not.toContain('hunter2');
  });
});
