/**
 * compose: static checks of docker-compose.yml and the Dockerfiles (no Docker engine needed).
 *
 * Checked against what is on disk: every app under apps/ has exactly one service running
 * `node apps/<name>/dist/main.js` (the file its package.json "main" names); every MOAT_* variable is
 * a key of moat.yaml (loadConfig must take it as an override); the chain's next hops name services
 * whose listen ports match, which admit the compose network as peers and are waited for as healthy;
 * only screen and quarantine's web UI publish ports; every service has a healthcheck; state lives on
 * named volumes; the image is built from node:22 and its runtime stage carries every app's dist.
 * Each failure names the service (or Dockerfile) and the problem.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  ConfigError,
  envName,
  envVariables,
  loadConfig,
  NetworkList,
  parseCidr,
  parseHostPort,
  schema,
  suggestVariable,
  type LoadedConfig,
  type MoatConfig,
} from '@moat/config';
import { SERVICE_NODE_OPTIONS, serviceNodeOptions } from '@moat/runtime';
import { describe, expect, it } from 'vitest';
import YAML from 'yaml';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../..');
const COMPOSE_FILE = path.join(ROOT, 'docker-compose.yml');
const DOCKERFILE = path.join(ROOT, 'Dockerfile');

/** Config keys that hold next-hop addresses, per section (the hops a service forwards to). */
const HOP_KEYS = ['next', 'quarantine'] as const;
/** The only ports that may be published on the host, per app: screen's SMTP port, quarantine's web UI. */
const PUBLIC_PORTS: Record<string, (c: MoatConfig) => Array<[string, string]>> = {
  screen: (c) => [['screen.listen', c.screen.listen]],
  quarantine: (c) => [['quarantine.http', c.quarantine.http]],
};
/** The host port screen must be published on. */
const SMTP_HOST_PORT = 25;
/** Folders that must outlive the container, per app. */
const STATE_DIRS: Record<string, (c: MoatConfig) => Array<[string, string]>> = {
  delivery: (c) => [
    ['delivery.queueDir', c.delivery.queueDir],
    ['delivery.maildir', c.delivery.maildir],
  ],
  quarantine: (c) => [['quarantine.storeDir', c.quarantine.storeDir]],
  greylist: (c) =>
    c.tls.cert ? [] : [['the generated TLS certificate (dataDir/tls)', path.join(c.dataDir, 'tls')]],
};
/** Variables that are not keys but are read by the loader itself. */
const META_VARIABLES = new Set(['MOAT_CONFIG']);

// ---------------------------------------------------------------------------------------------
// Loading

type Json = unknown;
interface Service {
  [key: string]: Json;
}
interface Compose {
  services: Record<string, Service>;
  networks?: Record<string, { ipam?: { config?: Array<{ subnet?: string }> } } | null>;
  volumes?: Record<string, Json>;
}

function readCompose(): Compose {
  const doc = YAML.parse(fs.readFileSync(COMPOSE_FILE, 'utf8'), { merge: true }) as Compose | null;
  if (!doc || typeof doc !== 'object' || !doc.services) throw new Error(`${COMPOSE_FILE}: no services`);
  return doc;
}

interface App {
  name: string;
  main: string | undefined;
  /** The process command every launcher (compose, tests) uses for it. */
  command: string[];
}

function readApps(): App[] {
  return fs
    .readdirSync(path.join(ROOT, 'apps'))
    .filter((name) => fs.existsSync(path.join(ROOT, 'apps', name, 'package.json')))
    .sort()
    .map((name) => {
      const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'apps', name, 'package.json'), 'utf8')) as {
        main?: string;
      };
      return { name, main: pkg.main, command: ['node', `apps/${name}/dist/main.js`] };
    });
}

/** Compose's variable substitution, with the defaults written in the file and an empty shell. */
function interpolate(value: string): string {
  return value.replace(
    /\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)/g,
    (whole, _braced: string | undefined, op: string | undefined, arg: string | undefined) => {
      if (whole === '$$') return '$';
      if (op === ':-' || op === '-') return arg ?? '';
      return '';
    },
  );
}

/** The environment a service's container gets (mapping or KEY=VALUE list), interpolated. */
function serviceEnv(service: Service): Record<string, string> {
  const env: Record<string, string> = {};
  const raw = service.environment;
  if (Array.isArray(raw)) {
    for (const item of raw) {
      const s = String(item);
      const i = s.indexOf('=');
      if (i > 0) env[s.slice(0, i)] = interpolate(s.slice(i + 1));
    }
  } else if (raw && typeof raw === 'object') {
    for (const [k, v] of Object.entries(raw)) {
      if (v !== null && v !== undefined) env[k] = interpolate(String(v));
    }
  }
  return env;
}

function commandOf(service: Service): string[] | string | undefined {
  const c = service.command;
  if (Array.isArray(c)) return c.map(String);
  if (typeof c === 'string') return c;
  return undefined;
}

const sameCommand = (a: string[] | string | undefined, b: string[]) =>
  Array.isArray(a) && a.length === b.length && a.every((x, i) => x === b[i]);

/** Which app a service runs (by its exact command), if any. */
function appOf(service: Service, apps: App[]): App | undefined {
  return apps.find((a) => sameCommand(commandOf(service), a.command));
}

/** Every MOAT_* variable name the schema defines (for "did you mean" hints). */
const isLoopbackHost = (host: string) => /^(127\.|localhost$|::1$|\[::1\]$)/.test(host);
const isWildcardHost = (host: string) => host === '0.0.0.0' || host === '::' || host === '[::]';

/** A CIDR list covers a whole subnet when one of its networks contains it. */
function coversSubnet(list: readonly string[], subnet: string): boolean {
  const s = parseCidr(subnet);
  if (!s) return false;
  return list.some((n) => {
    const c = parseCidr(n);
    return !!c && c.family === s.family && c.prefix <= s.prefix && new NetworkList([n]).has(s.address);
  });
}

/** Published ports in short ("[ip:]host:container[/proto]") or long ({ target, published }) syntax. */
function publishedPorts(service: Service): Array<{ spec: string; host?: number; target: number }> {
  const ports = Array.isArray(service.ports) ? service.ports : [];
  return ports.map((p: Json) => {
    if (p && typeof p === 'object') {
      const o = p as { target?: Json; published?: Json };
      return {
        spec: JSON.stringify(p),
        host: o.published === undefined ? undefined : Number(o.published),
        target: Number(o.target),
      };
    }
    const spec = interpolate(String(p));
    const parts = spec.replace(/\/(tcp|udp|sctp)$/, '').split(':');
    const target = Number(parts.at(-1));
    const host = parts.length >= 2 ? Number(parts.at(-2)) : undefined;
    return { spec, host, target };
  });
}

// ---------------------------------------------------------------------------------------------
// Dockerfile parsing

interface Instruction {
  keyword: string;
  args: string;
  line: number;
}
interface Stage {
  index: number;
  image: string;
  name: string | undefined;
  line: number;
  instructions: Instruction[];
}

function parseDockerfile(text: string): { preamble: Instruction[]; stages: Stage[] } {
  const instructions: Instruction[] = [];
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const start = i;
    let line = lines[i]!;
    if (/^\s*(#|$)/.test(line)) continue;
    while (/\\\s*$/.test(line) && i + 1 < lines.length) {
      line = line.replace(/\\\s*$/, ' ');
      i++;
      if (/^\s*#/.test(lines[i]!)) continue; // comments inside a continued RUN
      line += lines[i]!;
    }
    const m = /^\s*(\S+)\s*(.*)$/.exec(line)!;
    instructions.push({ keyword: m[1]!.toUpperCase(), args: m[2]!.trim(), line: start + 1 });
  }
  const preamble: Instruction[] = [];
  const stages: Stage[] = [];
  for (const ins of instructions) {
    if (ins.keyword === 'FROM') {
      const words = ins.args.split(/\s+/).filter((w) => !w.startsWith('--'));
      const as = words.findIndex((w) => w.toUpperCase() === 'AS');
      stages.push({
        index: stages.length,
        image: words[0] ?? '',
        name: as >= 0 ? words[as + 1] : undefined,
        line: ins.line,
        instructions: [],
      });
    } else if (stages.length) {
      stages.at(-1)!.instructions.push(ins);
    } else {
      preamble.push(ins);
    }
  }
  return { preamble, stages };
}

/** Problems every Dockerfile must avoid: an instruction before FROM, an unpinned or `latest` base. */
function checkStages(file: string, text: string): string[] {
  const rel = path.relative(ROOT, file);
  const problems: string[] = [];
  const { preamble, stages } = parseDockerfile(text);
  if (!stages.length) problems.push(`${rel}: no FROM: every stage needs a base image`);
  for (const ins of preamble) {
    if (ins.keyword !== 'ARG') problems.push(`${rel}:${ins.line}: ${ins.keyword} before the first FROM`);
  }
  const names = new Set<string>();
  for (const stage of stages) {
    const where = `${rel}:${stage.line} (stage ${stage.name ?? stage.index})`;
    if (!stage.image) problems.push(`${where}: FROM names no image`);
    else if (!names.has(stage.image)) {
      const [, repo = '', tag] = /^([^:@]+)(?::([^@]+))?(?:@.+)?$/.exec(stage.image) ?? [];
      if (!tag && !stage.image.includes('@')) {
        problems.push(`${where}: base image ${stage.image} has no tag; pin one (e.g. node:22-bookworm-slim)`);
      } else if (tag === 'latest') {
        problems.push(`${where}: base image ${stage.image} uses the latest tag; pin a version`);
      }
      if (/(^|\/)node$/.test(repo) && tag && !tag.startsWith('22')) {
        problems.push(
          `${where}: base image ${stage.image} is not Node 22 (the images run node:22-bookworm-slim)`,
        );
      }
    }
    for (const ins of stage.instructions) {
      const from = /--from=(\S+)/.exec(ins.args)?.[1];
      if (ins.keyword === 'COPY' && from && !names.has(from) && !/^\d+$/.test(from) && !from.includes(':')) {
        problems.push(`${rel}:${ins.line}: COPY --from=${from} names no earlier stage`);
      }
    }
    if (stage.name) names.add(stage.name);
  }
  return problems;
}

/** The external image a stage is built on, following FROM <earlier stage>. */
function baseImage(stages: Stage[], stage: Stage): string {
  let cur: Stage | undefined = stage;
  const seen = new Set<Stage>();
  while (cur && !seen.has(cur)) {
    seen.add(cur);
    const image: string = cur.image;
    const parent: Stage | undefined = stages.find((s) => s.name === image && s.index < cur!.index);
    if (!parent) return image;
    cur = parent;
  }
  return '';
}

/** The stages a stage builds on or copies from, itself included (transitively). */
function stageClosure(stages: Stage[], stage: Stage): Stage[] {
  const out = new Set<Stage>();
  const visit = (s: Stage | undefined) => {
    if (!s || out.has(s)) return;
    out.add(s);
    visit(stages.find((p) => p.name === s.image && p.index < s.index));
    for (const ins of s.instructions) {
      const from = /--from=(\S+)/.exec(ins.args)?.[1];
      if (from) visit(stages.find((p) => p.name === from || String(p.index) === from));
    }
  };
  visit(stage);
  return [...out];
}

// ---------------------------------------------------------------------------------------------

describe('docker-compose.yml', () => {
  const compose = readCompose();
  const apps = readApps();
  const services = Object.entries(compose.services);
  const known = envVariables(schema);

  const loaded = new Map<string, LoadedConfig>();
  const loadProblems = new Map<string, string>();
  for (const [name, service] of services) {
    const env = serviceEnv(service);
    if (!appOf(service, apps) && !Object.keys(env).some((k) => k.startsWith('MOAT_'))) continue;
    try {
      loaded.set(name, loadConfig({ file: '/nonexistent/moat.yaml', env: { ...env } }));
    } catch (err) {
      loadProblems.set(name, err instanceof ConfigError ? err.problems.join('; ') : String(err));
    }
  }

  /** The subnets of the networks a service is attached to (default when it names none). */
  const subnetsOf = (service: Service): string[] => {
    const nets = Array.isArray(service.networks)
      ? service.networks.map(String)
      : service.networks && typeof service.networks === 'object'
        ? Object.keys(service.networks)
        : ['default'];
    return nets.flatMap((n) =>
      (compose.networks?.[n]?.ipam?.config ?? []).flatMap((c) => (c.subnet ? [c.subnet] : [])),
    );
  };

  /** A service's mounts, long or short syntax; `named`: a named volume (not a host path). */
  const mountsOf = (service: Service) =>
    (Array.isArray(service.volumes) ? service.volumes : []).map((v: Json) => {
      if (v && typeof v === 'object') {
        const o = v as { source?: string; target?: string; type?: string };
        return { source: o.source ?? '', target: o.target ?? '', named: o.type === 'volume' };
      }
      const [source = '', target = ''] = String(v).split(':');
      return { source, target, named: !/^[./~]/.test(source) };
    });

  it('finds the apps on disk', () => {
    expect(apps.map((a) => a.name).length, 'no apps/*/package.json found').toBeGreaterThan(0);
  });

  it('runs every app in exactly one service, with the command its package.json names', () => {
    const problems: string[] = [];
    for (const app of apps) {
      const running = services.filter(([, s]) => sameCommand(commandOf(s), app.command)).map(([n]) => n);
      if (running.length !== 1) {
        problems.push(
          `app ${app.name}: ${running.length} services run ${JSON.stringify(app.command)} (${running.join(', ') || 'none'}); expected exactly one`,
        );
      }
      if (app.main !== 'dist/main.js') {
        problems.push(
          `app ${app.name}: package.json "main" is ${JSON.stringify(app.main)}, expected "dist/main.js"`,
        );
      } else if (!fs.existsSync(path.join(ROOT, 'apps', app.name, 'src', 'main.ts'))) {
        problems.push(
          `app ${app.name}: apps/${app.name}/src/main.ts is missing, so dist/main.js is never built`,
        );
      }
    }
    for (const [name, service] of services) {
      const cmd = commandOf(service);
      const text = Array.isArray(cmd) ? cmd.join(' ') : (cmd ?? '');
      const app = appOf(service, apps);
      if (!app && /apps\//.test(text)) {
        problems.push(
          `service ${name}: command ${JSON.stringify(cmd)} is not exactly ["node","apps/<name>/dist/main.js"] for an app on disk (${apps.map((a) => a.name).join(', ')})`,
        );
      }
      if (!app) continue;
      if (service.build !== '.' && (service.build as { context?: string } | undefined)?.context !== '.') {
        problems.push(`service ${name}: expected build: . (the Moat image from the root Dockerfile)`);
      }
      if (service.image !== 'moat:latest') {
        problems.push(`service ${name}: expected image: moat:latest, found ${JSON.stringify(service.image)}`);
      }
      if (service.entrypoint !== undefined) {
        problems.push(`service ${name}: sets an entrypoint; the command alone must start the app`);
      }
    }
    expect(problems, problems.join('\n')).toEqual([]);
  });

  it('uses only MOAT_* variables that are keys of moat.yaml', () => {
    const problems: string[] = [];
    for (const [name, service] of services) {
      const env = serviceEnv(service);
      const given = Object.keys(env).filter((k) => k.startsWith('MOAT_') && !META_VARIABLES.has(k));
      if (!given.length && !appOf(service, apps)) continue;
      const failed = loadProblems.get(name);
      if (failed) {
        problems.push(`service ${name}: its configuration is rejected: ${failed}`);
        continue;
      }
      const used = new Set(loaded.get(name)!.overrides.map((o) => o.variable));
      for (const variable of given) {
        if (!used.has(variable)) {
          problems.push(
            `service ${name}: ${variable} is not a configuration key${suggestVariable(variable, known)}`,
          );
        }
      }
    }
    expect(problems, problems.join('\n')).toEqual([]);
  });

  it('chains the services: next hops name services whose listen ports, peers and health match', () => {
    const problems: string[] = [];
    const byName = new Map(services);
    for (const [name, service] of services) {
      const app = appOf(service, apps);
      const cfg = loaded.get(name)?.config;
      if (!app || !cfg) continue;
      const section = (cfg as unknown as Record<string, Record<string, unknown> | undefined>)[app.name];
      if (!section) continue;
      for (const key of HOP_KEYS) {
        const list = section[key];
        if (!Array.isArray(list)) continue;
        const variable = envName([app.name, key]);
        if (!list.length) problems.push(`service ${name}: ${app.name}.${key} is empty; set ${variable}`);
        for (const addr of list.map(String)) {
          const hp = parseHostPort(addr);
          if (!hp) {
            problems.push(`service ${name}: ${app.name}.${key} entry ${addr} is not host:port`);
            continue;
          }
          const target = byName.get(hp.host);
          if (!target) {
            const hint = isLoopbackHost(hp.host)
              ? ' (loopback: inside a container that is the container itself)'
              : '';
            problems.push(
              `service ${name}: ${app.name}.${key} is ${addr}${hint}, but ${hp.host} is not a compose service; set ${variable} to <service>:<port>`,
            );
            continue;
          }
          const targetApp = appOf(target, apps);
          const targetCfg = loaded.get(hp.host)?.config;
          if (!targetApp) {
            problems.push(`service ${name}: ${app.name}.${key} names ${hp.host}, which runs no Moat app`);
            continue;
          }
          if (!targetCfg) {
            problems.push(
              `service ${name}: ${app.name}.${key} names ${hp.host}, whose configuration is rejected`,
            );
            continue;
          }
          const targetSection = (
            targetCfg as unknown as Record<string, { listen?: string; peers?: string[] }>
          )[targetApp.name];
          const listen = targetSection?.listen ? parseHostPort(targetSection.listen) : undefined;
          if (!listen) {
            problems.push(`service ${hp.host}: has no ${targetApp.name}.listen for ${name} to reach`);
            continue;
          }
          if (listen.port !== hp.port) {
            problems.push(
              `service ${name}: ${app.name}.${key} uses port ${hp.port} of ${hp.host}, but ${hp.host} listens on ${targetSection!.listen} (${envName([targetApp.name, 'listen'])})`,
            );
          }
          if (!isWildcardHost(listen.host)) {
            problems.push(
              `service ${hp.host}: listens on ${targetSection!.listen}, unreachable from ${name} in another container; listen on 0.0.0.0:${listen.port}`,
            );
          }
          for (const subnet of subnetsOf(service)) {
            if (!coversSubnet(targetSection?.peers ?? [], subnet)) {
              problems.push(
                `service ${hp.host}: ${targetApp.name}.peers (${(targetSection?.peers ?? []).join(',')}) does not admit ${name}'s network ${subnet}; set ${envName([targetApp.name, 'peers'])}`,
              );
            }
          }
          const dep = (service.depends_on ?? {}) as Record<string, { condition?: string }> | string[];
          const condition = Array.isArray(dep) ? undefined : dep[hp.host]?.condition;
          if (condition !== 'service_healthy') {
            problems.push(`service ${name}: depends_on ${hp.host} must have condition: service_healthy`);
          }
        }
      }
      // the healthcheck connects on loopback: loopback must be a peer, and must not be expected to send PROXY
      const hopSection = section as { peers?: string[]; proxyPeers?: string[]; listen?: string };
      if (hopSection.peers && !new NetworkList(hopSection.peers).has('127.0.0.1')) {
        problems.push(
          `service ${name}: ${app.name}.peers does not admit 127.0.0.1, so its healthcheck (on loopback) gets 421`,
        );
      }
      if (hopSection.proxyPeers && new NetworkList(hopSection.proxyPeers).has('127.0.0.1')) {
        problems.push(
          `service ${name}: ${app.name}.proxyPeers includes loopback, so its healthcheck would be expected to send a PROXY header`,
        );
      }
      if (hopSection.proxyPeers) {
        for (const subnet of subnetsOf(service)) {
          if (!coversSubnet(hopSection.proxyPeers, subnet)) {
            problems.push(
              `service ${name}: ${app.name}.proxyPeers does not cover the compose network ${subnet}, where screen connects from`,
            );
          }
        }
      }
    }
    for (const [name, service] of services) {
      if (appOf(service, apps) && !subnetsOf(service).length) {
        problems.push(
          `service ${name}: its network has no fixed subnet (networks.<name>.ipam.config[].subnet)`,
        );
      }
    }
    expect(problems, problems.join('\n')).toEqual([]);
  });

  it('publishes only screen (25) and the quarantine web UI, and stays scalable', () => {
    const problems: string[] = [];
    for (const [name, service] of services) {
      const app = appOf(service, apps);
      const cfg = loaded.get(name)?.config;
      const allowed = app && cfg && PUBLIC_PORTS[app.name] ? PUBLIC_PORTS[app.name]!(cfg) : [];
      const ports = publishedPorts(service);
      for (const p of ports) {
        const match = allowed.find(([, listen]) => parseHostPort(listen)?.port === p.target);
        if (!match) {
          problems.push(
            `service ${name}: publishes ${p.spec}; ${app ? 'an internal' : 'a backing'} service must not publish host ports`,
          );
        }
      }
      for (const [key, listen] of allowed) {
        const hp = parseHostPort(listen)!;
        if (!ports.some((p) => p.target === hp.port)) {
          problems.push(`service ${name}: ${key} (${listen}) is not published`);
        }
        if (!isWildcardHost(hp.host)) {
          problems.push(`service ${name}: ${key} is ${listen}; a published port must listen on 0.0.0.0`);
        }
      }
      if (app?.name === 'screen' && cfg) {
        const port = parseHostPort(cfg.screen.listen)!.port;
        if (!ports.some((p) => p.host === SMTP_HOST_PORT && p.target === port)) {
          problems.push(
            `service ${name}: expected host port ${SMTP_HOST_PORT} mapped to ${port} ("${SMTP_HOST_PORT}:${port}")`,
          );
        }
      }
      if (service.container_name !== undefined) {
        problems.push(`service ${name}: container_name prevents docker compose up --scale`);
      }
      if (service.network_mode !== undefined) {
        problems.push(`service ${name}: network_mode takes it off the compose network`);
      }
    }
    expect(problems, problems.join('\n')).toEqual([]);
  });

  it('gives every service a healthcheck (on its own port for the apps) and restart: unless-stopped', () => {
    const problems: string[] = [];
    for (const [name, service] of services) {
      const hc = service.healthcheck as { test?: Json; disable?: boolean } | undefined;
      const test = Array.isArray(hc?.test)
        ? hc.test.map(String)
        : typeof hc?.test === 'string'
          ? [hc.test]
          : [];
      if (!hc || hc.disable || !test.length || test[0] === 'NONE') {
        problems.push(`service ${name}: has no healthcheck`);
      } else {
        const app = appOf(service, apps);
        const cfg = loaded.get(name)?.config;
        const listen =
          app && cfg ? (cfg as unknown as Record<string, { listen?: string }>)[app.name]?.listen : undefined;
        const port = listen ? parseHostPort(listen)?.port : undefined;
        if (port !== undefined && !test.some((t) => t === String(port) || t.includes(`:${port}`))) {
          problems.push(
            `service ${name}: its healthcheck (${test.slice(0, 3).join(' ')} ...) does not probe its port ${port}`,
          );
        }
      }
      if (service.restart !== 'unless-stopped') {
        problems.push(
          `service ${name}: expected restart: unless-stopped, found ${JSON.stringify(service.restart)}`,
        );
      }
    }
    expect(problems, problems.join('\n')).toEqual([]);
  });

  it('keeps state on named volumes', () => {
    const problems: string[] = [];
    const declared = new Set(Object.keys(compose.volumes ?? {}));
    for (const [name, service] of services) {
      const mounts = mountsOf(service);
      for (const m of mounts) {
        if (m.named && m.source && !declared.has(m.source)) {
          problems.push(`service ${name}: volume ${m.source} is not declared under volumes:`);
        }
      }
      const app = appOf(service, apps);
      const cfg = loaded.get(name)?.config;
      if (!app || !cfg || !STATE_DIRS[app.name]) continue;
      for (const [what, dir] of STATE_DIRS[app.name]!(cfg)) {
        const onVolume = mounts.some(
          (m) =>
            m.named && m.target && (dir === m.target || dir.startsWith(m.target.replace(/\/$/, '') + '/')),
        );
        if (!onVolume) problems.push(`service ${name}: ${what} (${dir}) is not on a named volume`);
      }
    }
    expect(problems, problems.join('\n')).toEqual([]);
  });

  it("lets screen hand clients over: screen and greylist mount the folder of greylist's handover socket from one volume", () => {
    const problems: string[] = [];
    const byApp = (app: string) => services.filter(([, service]) => appOf(service, apps)?.name === app);
    const volumeAt = (service: Service, file: string) =>
      mountsOf(service).find((m) => m.named && path.dirname(file) === m.target.replace(/\/$/, ''))?.source;
    for (const [gName, greylist] of byApp('greylist')) {
      const gCfg = loaded.get(gName)?.config;
      if (!gCfg) continue;
      const at = gCfg.greylist.handoverSocket;
      const gVolume = volumeAt(greylist, at);
      if (!gVolume)
        problems.push(
          `service ${gName}: no named volume on ${path.dirname(at)} (greylist.handoverSocket ${at})`,
        );
      for (const [sName, screen] of byApp('screen')) {
        const sCfg = loaded.get(sName)?.config;
        if (!sCfg?.screen.handover) continue;
        if (sCfg.greylist.handoverSocket !== at)
          problems.push(
            `service ${sName}: hands over to ${sCfg.greylist.handoverSocket}, greylist listens at ${at}`,
          );
        const sVolume = volumeAt(screen, sCfg.greylist.handoverSocket);
        if (!sVolume || sVolume !== gVolume)
          problems.push(
            `service ${sName}: must mount volume ${gVolume ?? '?'} on ${path.dirname(at)}, as ${gName} does`,
          );
      }
    }
    expect(problems, problems.join('\n')).toEqual([]);
  });

  it('gives screen and greylist one reputation store that outlives their containers', () => {
    // sqlite (the default) is a file under dataDir: in a container it is the container's own, gone
    // with it, and never the other service's. In compose the store is the redis service, on a volume
    const problems: string[] = [];
    const stores = new Set<string>();
    for (const [name, service] of services) {
      const app = appOf(service, apps)?.name;
      const cfg = loaded.get(name)?.config;
      if ((app !== 'screen' && app !== 'greylist') || !cfg) continue;
      stores.add(cfg.store);
      const host = /^rediss?:\/\/(?:[^@/]*@)?([^:/]+)/.exec(cfg.store)?.[1];
      if (!host) {
        problems.push(
          `service ${name}: store ${cfg.store} is not shared (set MOAT_STORE to the redis service)`,
        );
        continue;
      }
      const redis = compose.services[host];
      if (!redis) problems.push(`service ${name}: store host ${host} is not a service`);
      else if (!mountsOf(redis).some((m) => m.named && m.target === '/data'))
        problems.push(`service ${host}: keeps its data in its container (no named volume on /data)`);
      const waits = service.depends_on as Record<string, { condition?: string }> | undefined;
      if (waits?.[host]?.condition !== 'service_healthy')
        problems.push(`service ${name}: does not wait for ${host} to be healthy`);
    }
    if (stores.size > 1) problems.push(`screen and greylist use different stores: ${[...stores].join(', ')}`);
    expect(problems, problems.join('\n')).toEqual([]);
  });

  it('pins every pulled image and builds from existing Dockerfiles', () => {
    const problems: string[] = [];
    for (const [name, service] of services) {
      const build = service.build;
      const context =
        typeof build === 'string' ? build : (build as { context?: string } | undefined)?.context;
      const dockerfile = (build as { dockerfile?: string } | undefined)?.dockerfile ?? 'Dockerfile';
      if (context !== undefined) {
        if (!fs.existsSync(path.join(ROOT, context, dockerfile))) {
          problems.push(`service ${name}: builds ${path.join(context, dockerfile)}, which does not exist`);
        }
        continue;
      }
      const image = String(service.image ?? '');
      const tag = /:([^/@]+)$/.exec(image)?.[1];
      if (!image) problems.push(`service ${name}: neither build nor image`);
      else if (!tag && !image.includes('@'))
        problems.push(`service ${name}: image ${image} has no tag; pin a version`);
      else if (tag === 'latest')
        problems.push(`service ${name}: image ${image} uses the latest tag; pin a version`);
    }
    expect(problems, problems.join('\n')).toEqual([]);
  });
});

describe('Dockerfile', () => {
  const apps = readApps();
  const text = fs.readFileSync(DOCKERFILE, 'utf8');
  const { stages } = parseDockerfile(text);

  it('has a FROM for every stage, pinned, and Node 22 for every node base', () => {
    const problems = checkStages(DOCKERFILE, text);
    const infra = path.join(ROOT, 'infra');
    const walk = (dir: string): string[] =>
      fs.existsSync(dir)
        ? fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
            const p = path.join(dir, e.name);
            if (e.isDirectory()) return p === path.join(infra, 'daemons') ? [] : walk(p);
            return /(^|\.)Dockerfile$|^Dockerfile\./.test(e.name) ? [p] : [];
          })
        : [];
    for (const file of walk(infra)) problems.push(...checkStages(file, fs.readFileSync(file, 'utf8')));
    expect(problems, problems.join('\n')).toEqual([]);
  });

  it('builds with npm ci and turbo, and runs as non-root from /app on node:22', () => {
    const problems: string[] = [];
    const runtime = stages.at(-1);
    if (!runtime) throw new Error('Dockerfile: no stages');
    const base = baseImage(stages, runtime);
    if (!/^node:22([-.]|$)/.test(base))
      problems.push(`Dockerfile: the runtime stage is based on ${base}, expected node:22-bookworm-slim`);
    const all = (s: Stage[], k: string) => s.flatMap((st) => st.instructions.filter((i) => i.keyword === k));
    const runs = all(stageClosure(stages, runtime), 'RUN').map((i) => i.args);
    if (!runs.some((r) => /\bnpm ci\b/.test(r))) problems.push('Dockerfile: no stage runs npm ci');
    const build = runs.find((r) => /\bturbo run build\b/.test(r));
    if (!build) problems.push('Dockerfile: no stage runs npx turbo run build');
    else {
      const filters = [...build.matchAll(/--filter[= ]['"]?([^'"\s]+)/g)].map((m) => m[1]!);
      const covers = (app: string) =>
        !filters.length ||
        filters.some(
          (f) => f === './apps/*' || f === 'apps/*' || f === `@moat/${app}` || f === `./apps/${app}`,
        );
      for (const app of apps) {
        if (!covers(app.name))
          problems.push(
            `Dockerfile: turbo build --filter ${filters.join(' ')} does not build app ${app.name}`,
          );
      }
    }
    const workdirs = runtime.instructions.filter((i) => i.keyword === 'WORKDIR');
    if (workdirs.at(-1)?.args !== '/app')
      problems.push('Dockerfile: the runtime stage must have WORKDIR /app');
    const user = runtime.instructions.filter((i) => i.keyword === 'USER').at(-1)?.args;
    if (!user || /^(root|0)(:|$)/.test(user))
      problems.push('Dockerfile: the runtime stage must switch to a non-root USER');
    const cmd = runtime.instructions.find((i) => i.keyword === 'ENTRYPOINT');
    if (cmd)
      problems.push(
        `Dockerfile:${cmd.line}: no ENTRYPOINT: compose's command must be the whole process command`,
      );
    expect(problems, problems.join('\n')).toEqual([]);
  });

  it("builds @moat/handover's native addon and ships it where the package loads it from", () => {
    const runs = stages
      .flatMap((st) => st.instructions.filter((i) => i.keyword === 'RUN'))
      .map((i) => i.args);
    // node-gyp needs python3, make and a C compiler; node:22-bookworm-slim has none of them
    expect(
      runs.some((r) => /apt-get install\b.*\bpython3\b.*\bmake\b.*\bg\+\+/.test(r)),
      'a RUN installing python3 make g++',
    ).toBe(true);
    const loader = fs.readFileSync(path.join(ROOT, 'packages/handover/src/index.ts'), 'utf8');
    const from = /'(\.\.\/native\/build\/Release\/handover\.node)'/.exec(loader)?.[1];
    expect(from, 'packages/handover/src/index.ts loads ../native/build/Release/handover.node').toBeDefined();
    expect(
      runs.some((r) => r.includes('native/build/Release') && r.includes('/out/')),
      'the build stage collects native/build/Release into /out',
    ).toBe(true);
  });

  it('runs each service with the V8 options the launcher and the tests give it (NODE_OPTIONS)', () => {
    const runtime = stages.at(-1)!;
    // ENV KEY=VALUE pairs (one ENV may set several); the last one set wins
    const set = new Map<string, string>();
    for (const ins of runtime.instructions.filter((i) => i.keyword === 'ENV'))
      for (const m of ins.args.matchAll(/([A-Z_][A-Z0-9_]*)=("[^"]*"|\S+)/g))
        set.set(m[1]!, m[2]!.replace(/^"|"$/g, ''));
    expect(set.get('NODE_OPTIONS'), 'Dockerfile runtime stage: ENV NODE_OPTIONS').toBe(SERVICE_NODE_OPTIONS);
    // each app's container: the Dockerfile's value unless its service sets its own, as serviceEnv() does
    const apps = readApps();
    for (const [name, service] of Object.entries(readCompose().services)) {
      const app = appOf(service, apps);
      const effective = serviceEnv(service).NODE_OPTIONS ?? set.get('NODE_OPTIONS');
      if (app) expect(effective, `service ${name}: NODE_OPTIONS`).toBe(serviceNodeOptions(app.name));
      else expect(serviceEnv(service).NODE_OPTIONS, `service ${name} sets NODE_OPTIONS`).toBeUndefined();
    }
  });

  it('lets clamd keep the streams it scans in memory (tmpfs on /tmp), as the managed clamd does', () => {
    const clamav = readCompose().services.clamav as { tmpfs?: string[] | string } | undefined;
    expect(clamav, 'service clamav').toBeDefined();
    const mounts = ([] as string[]).concat(clamav!.tmpfs ?? []);
    expect(
      mounts.some((m) => m.split(':')[0] === '/tmp'),
      'service clamav: a tmpfs on /tmp',
    ).toBe(true);
  });

  it("copies every app's dist, the package.json files and node_modules into the runtime stage", () => {
    const problems: string[] = [];
    const runtime = stages.at(-1)!;
    const copies = runtime.instructions
      .filter((i) => i.keyword === 'COPY' || i.keyword === 'ADD')
      .map((i) => {
        const words = i.args.split(/\s+/).filter((w) => !w.startsWith('--'));
        const from = /--from=(\S+)/.exec(i.args)?.[1];
        return { from, sources: words.slice(0, -1), ins: i };
      });
    const fromStage = (name: string | undefined) =>
      stages.find((s) => s.name === name || String(s.index) === name);
    const runsIn = (name: string | undefined, re: RegExp) => {
      const st = fromStage(name);
      return (
        !!st &&
        stageClosure(stages, st).some((s) =>
          s.instructions.some((i) => i.keyword === 'RUN' && re.test(i.args)),
        )
      );
    };
    for (const app of apps) {
      const wholesale = copies.find((c) => c.sources.some((s) => /(^|\/)apps\/?$/.test(s)));
      const own = copies.find((c) => c.sources.some((s) => s.includes(`apps/${app.name}`)));
      const copy = own ?? wholesale;
      if (!copy) {
        problems.push(`Dockerfile: the runtime stage copies neither apps/ nor apps/${app.name}/dist`);
      } else if (!runsIn(copy.from, /\bturbo run build\b|\btsc\b/)) {
        problems.push(
          `Dockerfile:${copy.ins.line}: apps/${app.name} is copied from a stage that does not build it`,
        );
      }
    }
    const modules = copies.some(
      (c) =>
        c.sources.some((s) => /node_modules\/?$/.test(s)) ||
        (c.sources.some((s) => /^\/app\/?$/.test(s)) && runsIn(c.from, /\bnpm (ci|install|prune)\b/)),
    );
    if (!modules)
      problems.push('Dockerfile: the runtime stage copies no node_modules (nor a stage that installed them)');
    const manifests = copies.some((c) => c.sources.some((s) => /package\.json$|^\/app\/?$/.test(s)));
    if (!manifests)
      problems.push("Dockerfile: the runtime stage copies no package.json (the workspaces' manifests)");
    expect(problems, problems.join('\n')).toEqual([]);
  });

  it('keeps host build output out of the build context (.dockerignore)', () => {
    const ignore = fs.existsSync(path.join(ROOT, '.dockerignore'))
      ? fs
          .readFileSync(path.join(ROOT, '.dockerignore'), 'utf8')
          .split(/\r?\n/)
          .map((l) => l.trim())
      : [];
    const missing = ['node_modules', 'dist', '.turbo', '.git'].filter(
      (p) => !ignore.includes(p) && !ignore.includes(`**/${p}`),
    );
    expect(missing, `.dockerignore does not exclude ${missing.join(', ')}`).toEqual([]);
  });
});
