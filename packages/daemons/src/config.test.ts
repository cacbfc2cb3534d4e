import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  aptInstallArgs,
  checkTools,
  clamdConfig,
  DEBIAN_PACKAGES,
  eicar,
  eicarSignature,
  ENV,
  findTool,
  formatZone,
  installHint,
  packagesFor,
  rbldnsdArgs,
  redisArgs,
  spamdArgs,
  spamdLocalCf,
  suiteEnv,
  writeZone,
  appendZone,
  zoneSpec,
  type DaemonHandle,
} from './index.js';

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'moat-daemons-unit-'));

describe('clamd config', () => {
  it('has the EICAR string and its body signature', () => {
    expect(eicar()).toHaveLength(68);
    expect(eicar().startsWith('X5O!P%@AP')).toBe(true);
    expect(eicarSignature()).toBe(
      `Eicar-Test-Signature:0:*:${Buffer.from(eicar(), 'latin1').toString('hex')}`,
    );
  });

  it('writes a foreground, loopback, local-socket config with sane limits', () => {
    const conf = clamdConfig({
      databaseDir: '/s/db',
      port: 3310,
      socket: '/s/clamd.sock',
      logFile: '/s/clamd.log',
    });
    const lines = conf.split('\n');
    for (const line of [
      'Foreground yes',
      'DatabaseDirectory /s/db',
      'TCPSocket 3310',
      'TCPAddr 127.0.0.1',
      'LocalSocket /s/clamd.sock',
      'LocalSocketMode 666',
      'SelfCheck 0',
      'Bytecode no',
      'LogFile /s/clamd.log',
      'StreamMaxLength 60M',
      'AlertExceedsMax yes',
    ]) {
      expect(lines).toContain(line);
    }
    expect(conf).toMatch(/^MaxScanSize \d+M$/m);
    expect(conf).toMatch(/^MaxFileSize \d+M$/m);
    expect(lines).toContain('TemporaryDirectory /dev/shm'); // Debian has it: streams scanned from RAM
    const own = clamdConfig({
      databaseDir: '/s/db',
      port: 1,
      socket: '/s/s',
      logFile: '/s/l',
      tmpDir: '/s/tmp',
    });
    expect(own.split('\n')).toContain('TemporaryDirectory /s/tmp');
  });
});

describe('spamd config', () => {
  it('is local-only by default', () => {
    const cf = spamdLocalCf();
    expect(cf).toContain('use_bayes 0\nbayes_auto_learn 0\nreport_safe 0\n');
    expect(cf).toContain('dns_available no\nskip_rbl_checks 1\n');
    expect(cf).not.toContain('dns_server');
  });

  it('sends DNS to the given server and appends extra text', () => {
    const cf = spamdLocalCf({ dnsServer: '127.0.0.1:10053', localCf: 'util_rb_tld test\n' });
    expect(cf).toContain('dns_available yes\nskip_rbl_checks 0\ndns_server 127.0.0.1:10053\n');
    expect(cf.endsWith('util_rb_tld test\n')).toBe(true);
    expect(cf).not.toContain('dns_available no');
  });

  it('runs in the foreground (no -d), local-only unless DNS is on, as the given user', () => {
    const p = { port: 7830, siteDir: '/s/site', homeDir: '/s/home', logFile: '/s/spamd.log', children: 2 };
    const local = spamdArgs({ ...p, local: true, user: 'debian-spamd' });
    expect(local).not.toContain('-d');
    expect(local).toEqual(
      expect.arrayContaining(['-L', '-u', 'debian-spamd', '-g', '--listen=127.0.0.1:7830']),
    );
    expect(local).toEqual(
      expect.arrayContaining(['--siteconfigpath=/s/site', '--max-children=2', '-A', '127.0.0.1']),
    );
    const net = spamdArgs({ ...p, local: false });
    expect(net).not.toContain('-L');
    expect(net).not.toContain('-u');
  });
});

describe('redis and rbldnsd arguments', () => {
  it('redis persists nothing and stays in the foreground', () => {
    const args = redisArgs(6400, '/s');
    expect(args.join(' ')).toBe(
      '--bind 127.0.0.1 --port 6400 --save  --appendonly no --daemonize no --dir /s',
    );
    expect(args[args.indexOf('--save') + 1]).toBe('');
  });

  it('rbldnsd runs in the foreground, reloads every second, on loopback UDP', () => {
    const args = rbldnsdArgs({
      port: 10053,
      dir: '/z',
      zones: [
        { name: 'zen.test', type: 'ip4set', file: 'zen4.zone' },
        { name: 'zen.test', type: 'ip6trie', file: 'zen6.zone' },
      ],
    });
    expect(args.join(' ')).toBe(
      '-n -c 1s -t 60 -w /z -b 127.0.0.1/10053 zen.test:ip4set:zen4.zone zen.test:ip6trie:zen6.zone',
    );
    expect(() => rbldnsdArgs({ port: 1, dir: '/z', zones: [] })).toThrow(/at least one zone/);
  });

  it('rejects bad zone specs', () => {
    expect(zoneSpec({ name: 'dbl.test', type: 'dnset', file: 'dbl.zone' })).toBe('dbl.test:dnset:dbl.zone');
    expect(() => zoneSpec({ name: 'a.test', type: 'ip4set', file: '../x' })).toThrow(/plain file name/);
    expect(() => zoneSpec({ name: 'a.test', type: 'nope' as 'ip4set', file: 'x' })).toThrow(/zone type/);
    expect(() => zoneSpec({ name: 'a:b', type: 'ip4set', file: 'x' })).toThrow(/zone name/);
  });
});

describe('zone files', () => {
  it('formats lines newline-terminated', () => {
    expect(formatZone([])).toBe('');
    expect(formatZone(['127.0.0.2 :2:listed $', '127.0.0.3'])).toBe('127.0.0.2 :2:listed $\n127.0.0.3\n');
    expect(formatZone('a\nb')).toBe('a\nb\n');
    expect(formatZone('a\n')).toBe('a\n');
  });

  it('writes and appends, moving the mtime a second ahead when an edit lands in the same second', () => {
    const dir = tmp();
    try {
      const file = writeZone(dir, 'zen4.zone', ['127.0.0.2 :2:listed $']);
      const first = Math.floor(fs.statSync(file).mtimeMs / 1000);
      appendZone(dir, 'zen4.zone', '127.0.0.3 :3:listed $');
      expect(fs.readFileSync(file, 'utf8')).toBe('127.0.0.2 :2:listed $\n127.0.0.3 :3:listed $\n');
      expect(Math.floor(fs.statSync(file).mtimeMs / 1000)).toBeGreaterThan(first);
      expect(fs.statSync(file).mode & 0o777).toBe(0o644);
      expect(() => writeZone(dir, 'a/b', [])).toThrow();
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('tools', () => {
  it('maps tools to Debian packages, deduplicated, in the documented order', () => {
    expect(packagesFor(['smtp-sink', 'swaks', 'postfix', 'clamd', 'dig'])).toEqual([
      'clamav-daemon',
      'bind9-dnsutils',
      'postfix',
      'swaks',
    ]);
    expect(packagesFor([])).toEqual([]);
    expect(DEBIAN_PACKAGES.join(' ')).toBe(
      'clamav-daemon clamdscan spamassassin spamd spamc rbldnsd bind9-dnsutils redis-server postfix swaks',
    );
  });

  it('says exactly what to install', () => {
    expect(aptInstallArgs(['spamd', 'swaks'])).toEqual([
      'install',
      '-y',
      '--no-install-recommends',
      'spamd',
      'swaks',
    ]);
    const hint = installHint(['rbldnsd', 'postfix', 'swaks'], true);
    expect(hint).toContain('apt-get install -y --no-install-recommends rbldnsd postfix swaks');
    expect(hint).toContain('postfix postfix/main_mailer_type select No configuration');
    expect(installHint(['rbldnsd'], true)).not.toContain('debconf');
    expect(installHint(['rbldnsd'], false)).toMatch(/not a Debian\/Ubuntu machine/);
  });

  it('finds executables on PATH', () => {
    const dir = tmp();
    try {
      fs.writeFileSync(path.join(dir, 'swaks'), '#!/bin/sh\n', { mode: 0o755 });
      fs.writeFileSync(path.join(dir, 'not-executable'), '', { mode: 0o644 });
      expect(findTool('swaks', dir)).toBe(path.join(dir, 'swaks'));
      expect(findTool('not-executable', dir)).toBeUndefined();
      const res = checkTools(['swaks'], dir);
      expect(res.found.swaks).toBe(path.join(dir, 'swaks'));
      expect(res.missing).toEqual([]);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('suiteEnv', () => {
  it('names every daemon by its variable', () => {
    const h = (name: string, address: string, extra: object = {}) =>
      ({
        name,
        address,
        port: 1,
        pid: 1,
        logFile: '',
        readyMs: 0,
        stop: async () => {},
        ...extra,
      }) as DaemonHandle;
    const env = suiteEnv(
      [
        h('clamd', '127.0.0.1:1', { socket: '/s/clamd.sock' }),
        h('spamd', '127.0.0.1:2'),
        h('redis', 'redis://127.0.0.1:3'),
        h('rbldnsd', '127.0.0.1:4', { dir: '/s/rbldnsd' }),
      ],
      '/s',
    );
    expect(Object.keys(env).sort()).toEqual(Object.values(ENV).sort());
    expect(env).toEqual({
      MOAT_TEST_CLAMD: '127.0.0.1:1',
      MOAT_TEST_CLAMD_SOCKET: '/s/clamd.sock',
      MOAT_TEST_SPAMD: '127.0.0.1:2',
      MOAT_TEST_REDIS: 'redis://127.0.0.1:3',
      MOAT_TEST_RBLDNSD: '127.0.0.1:4',
      MOAT_TEST_RBLDNSD_DIR: '/s/rbldnsd',
      MOAT_DAEMONS_STATE: '/s',
    });
  });
});

describe('freePort', () => {
  it('hands out distinct ports below the ephemeral range, free to bind, for TCP and UDP', async () => {
    const { freePort } = await import('./index.js');
    const { createServer } = await import('node:net');
    const low = Number(
      fs.readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0],
    );
    const ports: number[] = [];
    for (let i = 0; i < 50; i++) ports.push(await freePort());
    ports.push(await freePort('udp'));
    expect(new Set(ports).size).toBe(ports.length);
    for (const p of ports) expect(p < low && p > 1024, `port ${p} (ephemeral from ${low})`).toBe(true);
    // and it really is free: a listener takes it
    const srv = createServer();
    await new Promise<void>((resolve, reject) => {
      srv.once('error', reject);
      srv.listen(ports[0], '127.0.0.1', resolve);
    });
    await new Promise((r) => srv.close(r));
  });
});
