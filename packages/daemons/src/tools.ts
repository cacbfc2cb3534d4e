/**
 * tools: which external programs Moat's tests and daemons need and which Debian package ships each.
 * Exports TOOL_PACKAGES, ALL_TOOLS, DEBIAN_PACKAGES, findTool/requireTool (PATH plus the sbin
 * folders), checkTools (what is present), installHint (the exact command to run), aptInstallArgs,
 * and ensureInstalled: as root on Debian/Ubuntu it installs what is missing with ONE
 * `apt-get install --no-install-recommends` (postfix preseeded to "No configuration", services kept
 * from starting by a temporary policy-rc.d); anywhere else it throws an error naming the packages.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { isRoot, SBIN_DIRS } from './process.js';

/** Every program we look for, and the Debian package that ships it. */
export const TOOL_PACKAGES = {
  clamd: 'clamav-daemon',
  clamdscan: 'clamdscan',
  spamd: 'spamd',
  spamc: 'spamc',
  spamassassin: 'spamassassin',
  rbldnsd: 'rbldnsd',
  'redis-server': 'redis-server',
  dig: 'bind9-dnsutils',
  swaks: 'swaks',
  'smtp-source': 'postfix',
  'smtp-sink': 'postfix',
  postfix: 'postfix',
} as const;

export type Tool = keyof typeof TOOL_PACKAGES;
export const ALL_TOOLS = Object.keys(TOOL_PACKAGES) as Tool[];

/** The full set, in the order of the documented install command. */
export const DEBIAN_PACKAGES = [
  'clamav-daemon',
  'clamdscan',
  'spamassassin',
  'spamd',
  'spamc',
  'rbldnsd',
  'bind9-dnsutils',
  'redis-server',
  'postfix',
  'swaks',
] as const;

export const POSTFIX_PRESEED = 'postfix postfix/main_mailer_type select No configuration\n';
const POLICY_RC_D = '/usr/sbin/policy-rc.d';

/** The absolute path of an executable, searching PATH and the sbin folders; undefined when absent. */
export function findTool(name: string, envPath = process.env.PATH ?? ''): string | undefined {
  const dirs = [...envPath.split(path.delimiter).filter(Boolean), ...SBIN_DIRS];
  for (const dir of dirs) {
    const file = path.join(dir, name);
    try {
      fs.accessSync(file, fs.constants.X_OK);
      if (fs.statSync(file).isFile()) return file;
    } catch {
      // not here
    }
  }
  return undefined;
}

export interface ToolCheck {
  /** tool -> absolute path, for those present. */
  found: Partial<Record<Tool, string>>;
  missing: Tool[];
  /** Debian packages that provide the missing tools, deduplicated, in DEBIAN_PACKAGES order. */
  packages: string[];
}

export function packagesFor(tools: readonly Tool[]): string[] {
  const wanted = new Set<string>(tools.map((t) => TOOL_PACKAGES[t]));
  return DEBIAN_PACKAGES.filter((p) => wanted.has(p));
}

export function checkTools(tools: readonly Tool[] = ALL_TOOLS, envPath?: string): ToolCheck {
  const found: Partial<Record<Tool, string>> = {};
  const missing: Tool[] = [];
  for (const tool of tools) {
    const file = findTool(tool, envPath);
    if (file) found[tool] = file;
    else missing.push(tool);
  }
  return { found, missing, packages: packagesFor(missing) };
}

export function aptInstallArgs(packages: readonly string[]): string[] {
  return ['install', '-y', '--no-install-recommends', ...packages];
}

/** The exact words for someone who has to install by hand. */
export function installHint(packages: readonly string[], debian = isDebian()): string {
  const preseed = packages.includes('postfix')
    ? `echo '${POSTFIX_PRESEED.trim()}' | sudo debconf-set-selections && `
    : '';
  const cmd = `${preseed}sudo DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${packages.join(' ')}`;
  return debian
    ? `install them as root: ${cmd}`
    : `this is not a Debian/Ubuntu machine; install the equivalents of the Debian packages ` +
        `${packages.join(' ')} (ClamAV daemon, SpamAssassin spamd/spamc, rbldnsd, Redis, Postfix tools, swaks, dig). ` +
        `On Debian/Ubuntu that is: ${cmd}`;
}

export function requireTool(tool: Tool): string {
  const file = findTool(tool);
  if (file) return file;
  throw new Error(
    `${tool} not found (looked in PATH and ${SBIN_DIRS.join(', ')}); ${installHint(packagesFor([tool]))}`,
  );
}

function isDebian(): boolean {
  return fs.existsSync('/etc/debian_version');
}

function aptListsEmpty(dir = '/var/lib/apt/lists'): boolean {
  try {
    return !fs.readdirSync(dir).some((f) => /_Packages(\.[a-z0-9]+)?$/.test(f));
  } catch {
    return true;
  }
}

export interface EnsureOptions {
  /** Progress lines; default: stderr. */
  log?: (line: string) => void;
  /** Where to look for the tools instead of $PATH (the sbin folders are always searched). */
  envPath?: string;
}

/**
 * Makes sure every tool is present. Installs the missing ones when root on Debian/Ubuntu (at most
 * one `apt-get update`, only when the package lists are empty or the install failed), otherwise
 * throws an error that says exactly what to install.
 */
export function ensureInstalled(tools: readonly Tool[] = ALL_TOOLS, opts: EnsureOptions = {}): ToolCheck {
  const log = opts.log ?? ((line: string) => process.stderr.write(`[daemons] ${line}\n`));
  const before = checkTools(tools, opts.envPath);
  if (before.missing.length === 0) return before;
  const what = `missing ${before.missing.join(', ')} (Debian packages: ${before.packages.join(' ')})`;
  if (!isRoot() || !isDebian()) {
    throw new Error(`${what}; ${installHint(before.packages)}`);
  }

  log(`${what}: installing`);
  const t0 = Date.now();
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const run = (cmd: string, args: string[], input?: string) =>
    spawnSync(cmd, args, { env, input, stdio: [input === undefined ? 'ignore' : 'pipe', 2, 2] }).status === 0;

  let policy = false;
  if (!fs.existsSync(POLICY_RC_D)) {
    fs.writeFileSync(
      POLICY_RC_D,
      '#!/bin/sh\n# temporary, from @moat/daemons: no service starts during install\nexit 101\n',
    );
    fs.chmodSync(POLICY_RC_D, 0o755);
    policy = true;
  }
  try {
    run('debconf-set-selections', [], POSTFIX_PRESEED);
    let updated = false;
    if (aptListsEmpty()) {
      run('apt-get', ['update']);
      updated = true;
    }
    let ok = run('apt-get', aptInstallArgs(before.packages));
    if (!ok && !updated) {
      log('apt-get install failed; updating the package lists and trying once more');
      run('apt-get', ['update']);
      ok = run('apt-get', aptInstallArgs(before.packages));
    }
    if (!ok) throw new Error(`apt-get install ${before.packages.join(' ')} failed (see the output above)`);
  } finally {
    if (policy) fs.rmSync(POLICY_RC_D, { force: true });
  }

  const after = checkTools(tools, opts.envPath);
  if (after.missing.length > 0) {
    throw new Error(
      `still missing after install: ${after.missing.join(', ')}; ${installHint(after.packages)}`,
    );
  }
  log(`installed ${before.packages.join(' ')} in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  return after;
}
