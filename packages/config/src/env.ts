/**
 * env: every key can be overridden by an environment variable named MOAT_ + the key path in upper
 * snake case (screen.dnsblSites -> MOAT_SCREEN_DNSBL_SITES). Lists are comma-separated; maps are
 * "key=value,key=value" or JSON. The names are derived by walking the schema, so a new key gets its
 * variable without any table to update.
 */
import type { z } from 'zod';

type Kind = 'object' | 'array' | 'record' | 'number' | 'boolean' | 'scalar';

interface Def {
  type: string;
  innerType?: z.ZodType;
  in?: z.ZodType;
  shape?: Record<string, z.ZodType>;
  options?: z.ZodType[];
}

function def(s: z.ZodType): Def {
  return (s as unknown as { _zod: { def: Def } })._zod.def;
}

/** Strips wrappers (default, optional, pipes, unions of scalars) down to what a leaf holds. */
function kindOf(s: z.ZodType): { kind: Kind; shape?: Record<string, z.ZodType> } {
  let cur = s;
  for (;;) {
    const d = def(cur);
    switch (d.type) {
      case 'default':
      case 'prefault':
      case 'optional':
      case 'nullable':
      case 'readonly':
      case 'catch':
        cur = d.innerType!;
        continue;
      case 'pipe':
        cur = d.in!;
        continue;
      case 'object':
        return { kind: 'object', shape: d.shape! };
      case 'array':
        return { kind: 'array' };
      case 'record':
        return { kind: 'record' };
      case 'number':
        return { kind: 'number' };
      case 'boolean':
        return { kind: 'boolean' };
      case 'union': {
        const kinds = d.options!.map((o) => kindOf(o).kind);
        if (kinds.includes('array')) return { kind: 'array' };
        return { kind: 'scalar' };
      }
      default:
        return { kind: 'scalar' };
    }
  }
}

export function envName(pathParts: readonly string[]): string {
  return 'MOAT_' + pathParts.map((p) => p.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase()).join('_');
}

function coerce(kind: Kind, raw: string): unknown {
  switch (kind) {
    case 'array':
      return raw
        .split(',')
        .map((s) => s.trim())
        .filter((s) => s.length > 0);
    case 'record':
      if (raw.trim().startsWith('{')) return JSON.parse(raw);
      return Object.fromEntries(
        raw
          .split(',')
          .map((s) => s.trim())
          .filter(Boolean)
          .map((pair) => {
            const i = pair.indexOf('=');
            return i < 0 ? [pair, ''] : [pair.slice(0, i).trim(), pair.slice(i + 1).trim()];
          }),
      );
    case 'number':
      return raw.trim() === '' ? raw : Number(raw);
    case 'boolean':
      if (/^(1|true|yes|on)$/i.test(raw.trim())) return true;
      if (/^(0|false|no|off)$/i.test(raw.trim())) return false;
      return raw;
    default:
      return raw;
  }
}

export interface EnvOverride {
  path: string[];
  variable: string;
}

/**
 * MOAT_ variables Moat reads for other purposes than keys: the file's path, the test daemons'
 * addresses (MOAT_TEST_*, MOAT_DAEMONS_STATE) and the benchmark's knobs (MOAT_BENCH_*).
 */
const OTHER_VARIABLES = /^MOAT_(CONFIG|DAEMONS_STATE|TEST_\w*|BENCH_\w*)$/;

/** Every variable that names a key of the schema. */
export function envVariables(schema: z.ZodType): string[] {
  const out: string[] = [];
  const walk = (s: z.ZodType, prefix: string[]) => {
    for (const [key, child] of Object.entries(kindOf(s).shape ?? {})) {
      const p = [...prefix, key];
      if (kindOf(child).kind === 'object') walk(child, p);
      else out.push(envName(p));
    }
  };
  walk(schema, []);
  return out;
}

function distance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0]!;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const cur = row[j]!;
      row[j] = Math.min(row[j]! + 1, row[j - 1]! + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = cur;
    }
  }
  return row[b.length]!;
}

/** " (did you mean MOAT_X or MOAT_Y?)" for a mistyped variable, or '' when nothing is near. */
export function suggestVariable(name: string, known: readonly string[]): string {
  const best = known
    .map((k) => [k, distance(name, k)] as const)
    .sort((x, y) => x[1] - y[1])
    .filter(([, d]) => d <= 4)
    .slice(0, 3)
    .map(([k]) => k);
  return best.length ? ` (did you mean ${best.join(' or ')}?)` : '';
}

/**
 * The MOAT_ variables in env that name no key (a typo, or a key that is gone), apart from
 * OTHER_VARIABLES, each as a problem line naming it.
 */
export function unknownVariables(schema: z.ZodType, env: NodeJS.ProcessEnv): string[] {
  const known = envVariables(schema);
  const keys = new Set(known);
  return Object.keys(env)
    .filter((v) => v.startsWith('MOAT_') && !keys.has(v) && !OTHER_VARIABLES.test(v))
    .sort()
    .map((v) => `${v}: not a configuration key${suggestVariable(v, known)}`);
}

/**
 * Applies MOAT_* variables onto the raw (unvalidated) file contents. Returns which keys came from the
 * environment, so a validation error can name the variable as well as the key.
 */
export function applyEnv(
  schema: z.ZodType,
  raw: Record<string, unknown>,
  env: NodeJS.ProcessEnv,
): { raw: Record<string, unknown>; overrides: EnvOverride[] } {
  const overrides: EnvOverride[] = [];
  const walk = (s: z.ZodType, target: Record<string, unknown>, prefix: string[]) => {
    const { shape } = kindOf(s);
    for (const [key, child] of Object.entries(shape ?? {})) {
      const p = [...prefix, key];
      const k = kindOf(child);
      if (k.kind === 'object') {
        const existing = target[key];
        const sub =
          existing && typeof existing === 'object' && !Array.isArray(existing)
            ? { ...(existing as object) }
            : {};
        walk(child, sub as Record<string, unknown>, p);
        if (Object.keys(sub).length || existing !== undefined) target[key] = sub;
        continue;
      }
      const variable = envName(p);
      const value = env[variable];
      if (value === undefined) continue;
      let parsed: unknown;
      try {
        parsed = coerce(k.kind, value);
      } catch {
        parsed = value;
      }
      target[key] = parsed;
      overrides.push({ path: p, variable });
    }
  };
  const copy = { ...raw };
  walk(schema, copy, []);
  return { raw: copy, overrides };
}
