/**
 * postfix: a real Postfix (3.x) as a private instance for tests and benchmarks: its own main.cf and
 * master.cf, queue, data folder and maillog in a temporary folder, started with `postfix -c`, no
 * systemd. Needs root (Postfix's master) and the Debian postfix package.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { tmpDir, waitFor, waitForPort } from './net.js';
import { which } from './tools.js';

/** Why a private Postfix cannot run here, or undefined when it can. */
export function postfixUnavailable(): string | undefined {
  if (process.getuid?.() !== 0) return "not root (Postfix's master needs it)";
  if (which('postfix') === undefined) return 'postfix is not installed (Debian package postfix)';
  return undefined;
}

export interface PostfixOptions {
  /** The port of the default `inet` line (smtpd on 127.0.0.1). */
  port: number;
  /** main.cf settings, added to the base ones or replacing them; given the instance's folder. */
  main?: Record<string, string> | ((dir: string) => Record<string, string>);
  /** master.cf lines, added, or replacing the base line of the same service name and type. */
  master?: string[];
}

export interface PostfixInstance {
  /** The instance's folder: etc/, queue/, data/, maillog. */
  dir: string;
  /** The master's process id (its children are the instance's other processes). */
  masterPid(): number | undefined;
  /** Stops the instance and removes its folder. */
  stop(): Promise<void>;
}

function postfix(dir: string, cmd: string): Promise<{ status: number | null; output: string }> {
  // postfix writes its fatal messages to the terminal only; `script` gives it one
  return new Promise((resolve, reject) => {
    const child = spawn('script', ['-qc', `postfix -c ${dir}/etc ${cmd}`, '/dev/null'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr.on('data', (d: Buffer) => (output += d.toString()));
    child.on('error', reject);
    child.on('close', (status) => resolve({ status, output }));
  });
}

function baseMain(dir: string): Record<string, string> {
  return {
    compatibility_level: '3.6',
    queue_directory: `${dir}/queue`,
    data_directory: `${dir}/data`,
    mail_owner: 'postfix',
    setgid_group: 'postdrop',
    myhostname: 'pf.example.test',
    mydestination: '',
    inet_interfaces: '127.0.0.1',
    inet_protocols: 'ipv4',
    maillog_file: `${dir}/maillog`,
    maillog_file_prefixes: path.dirname(dir),
    mynetworks: '127.0.0.1/32',
    smtpd_relay_restrictions: 'reject_unauth_destination',
    alias_maps: '',
    alias_database: '',
    local_recipient_maps: '',
    smtpd_banner: '$myhostname ESMTP',
  };
}

const BASE_MASTER = [
  'cleanup unix n - n - 0 cleanup',
  'qmgr unix n - n 300 1 qmgr',
  'rewrite unix - - n - - trivial-rewrite',
  'bounce unix - - n - 0 bounce',
  'defer unix - - n - 0 bounce',
  'trace unix - - n - 0 bounce',
  'verify unix - - n - 1 verify',
  'flush unix n - n 1000? 0 flush',
  'proxymap unix - - n - - proxymap',
  'showq unix n - n - - showq',
  'error unix - - n - - error',
  'retry unix - - n - - error',
  'discard unix - - n - - discard',
  'anvil unix - - n - 1 anvil',
  'scache unix - - n - 1 scache',
  'postlog unix-dgram n - n - 1 postlogd',
];

/** Writes the instance's configuration and starts it; resolves once it accepts connections on `port`. */
export async function startPostfix(o: PostfixOptions): Promise<PostfixInstance> {
  const dir = tmpDir('moat-postfix-');
  fs.mkdirSync(path.join(dir, 'etc'));
  fs.mkdirSync(path.join(dir, 'queue'));
  fs.mkdirSync(path.join(dir, 'data'));
  fs.chmodSync(dir, 0o755);
  fs.chownSync(path.join(dir, 'data'), postfixUid(), -1);
  const main = { ...baseMain(dir), ...(typeof o.main === 'function' ? o.main(dir) : o.main) };
  fs.writeFileSync(
    path.join(dir, 'etc', 'main.cf'),
    Object.entries(main)
      .map(([k, v]) => (v ? `${k} = ${v}\n` : `${k} =\n`))
      .join(''),
  );
  const key = (line: string) => line.split(/\s+/).slice(0, 2).join(' ');
  const master = new Map(
    [`${o.port} inet n - n - - smtpd`, ...BASE_MASTER, ...(o.master ?? [])].map((l) => [key(l), l]),
  );
  fs.writeFileSync(path.join(dir, 'etc', 'master.cf'), [...master.values()].map((l) => `${l}\n`).join(''));

  const masterPid = (): number | undefined => {
    try {
      const pid = Number(fs.readFileSync(path.join(dir, 'queue', 'pid', 'master.pid'), 'utf8').trim());
      return pid > 0 && running(pid) ? pid : undefined;
    } catch {
      return undefined;
    }
  };
  const stop = async () => {
    const pid = masterPid();
    if (pid !== undefined) {
      await postfix(dir, 'stop');
      await waitFor(() => !running(pid) || undefined, 10_000, "Postfix's master to stop");
    }
    fs.rmSync(dir, { recursive: true, force: true, maxRetries: 5 });
  };
  try {
    const r = await postfix(dir, 'start');
    if (r.status !== 0) throw new Error(`postfix start failed: ${r.output}`);
    await waitForPort(o.port, 10_000, 'Postfix');
  } catch (err) {
    await stop();
    throw err;
  }
  return { dir, masterPid, stop };
}

/**
 * Whether a process is still running. The master daemonizes, so whoever adopts it reaps it, when it
 * gets to it: an exited master can linger as a zombie, which /proc still lists (state Z).
 */
function running(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat[stat.lastIndexOf(') ') + 2] !== 'Z';
  } catch {
    return false;
  }
}

function postfixUid(): number {
  const line = fs
    .readFileSync('/etc/passwd', 'utf8')
    .split('\n')
    .find((l) => l.startsWith('postfix:'));
  if (!line) throw new Error('no postfix user (Debian package postfix)');
  return Number(line.split(':')[2]);
}
