/**
 * load: reads moat.yaml (path from MOAT_CONFIG, default ./moat.yaml, built-in defaults when the default
 * does not exist; a file named in MOAT_CONFIG must exist), applies MOAT_* overrides, validates, derives, freezes. Errors name every bad key (and
 * the variable it came from) in one ConfigError; nothing else in Moat reads process.env for settings.
 */
import fs from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';
import { applyEnv, type EnvOverride, unknownVariables } from './env.js';
import { derive, derivedProblems, schema, type MoatConfig } from './schema.js';

export class ConfigError extends Error {
  constructor(
    readonly problems: string[],
    readonly source: string,
  ) {
    super(`invalid configuration (${source}):\n  ${problems.join('\n  ')}`);
    this.name = 'ConfigError';
  }
}

export interface LoadOptions {
  /** Defaults to process.env. */
  env?: NodeJS.ProcessEnv;
  /**
   * Overrides MOAT_CONFIG, taken as the default path is (tests): when it does not exist, built-in
   * defaults.
   */
  file?: string;
}

export interface LoadedConfig {
  config: Readonly<MoatConfig>;
  file: string;
  fileExists: boolean;
  overrides: EnvOverride[];
}

function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value)) deepFreeze(v);
  }
  return value;
}

export function loadConfig(options: LoadOptions = {}): LoadedConfig {
  const env = options.env ?? process.env;
  // a file the operator named must be there; only the default may be absent (an empty MOAT_CONFIG is unset)
  const named = options.file === undefined && !!env.MOAT_CONFIG;
  const file = path.resolve(options.file ?? (env.MOAT_CONFIG || './moat.yaml'));
  let text: string | undefined;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code !== 'ENOENT' || named) {
      throw new ConfigError(
        [`${file}${named ? ' (from MOAT_CONFIG)' : ''}: cannot read it: ${e.message}`],
        file,
      );
    }
  }
  let raw: unknown = {};
  const fileExists = text !== undefined;
  if (text !== undefined) {
    try {
      raw = YAML.parse(text) ?? {};
    } catch (err) {
      throw new ConfigError([`${file}: not valid YAML: ${(err as Error).message}`], file);
    }
    if (typeof raw !== 'object' || Array.isArray(raw)) {
      throw new ConfigError([`${file}: expected a mapping of keys at the top level`], file);
    }
  }
  const { raw: merged, overrides } = applyEnv(schema, raw as Record<string, unknown>, env);
  const result = schema.safeParse(merged);
  // a variable that sets nothing is a mistake as an unknown key in the file is
  const unknown = unknownVariables(schema, env);
  if (!result.success || unknown.length) {
    // a variable sets a whole leaf (a list or a map too), so an issue inside it (a list element, a
    // map entry) came from the variable whose path starts its own
    const fromEnv = (issuePath: readonly PropertyKey[]) =>
      overrides.find((o) => o.path.every((p, i) => String(issuePath[i]) === p))?.variable;
    const problems = (result.error?.issues ?? []).map((issue) => {
      const keys =
        issue.code === 'unrecognized_keys'
          ? issue.keys.map((k) => [...issue.path, k].join('.'))
          : [issue.path.join('.') || '(top level)'];
      const key = keys.join(', ');
      const variable = fromEnv(issue.path);
      const message = issue.code === 'unrecognized_keys' ? 'unknown key' : issue.message;
      return `${key}: ${message}${variable ? ` (from ${variable})` : ''}`;
    });
    throw new ConfigError([...problems, ...unknown], fileExists ? file : 'built-in defaults and environment');
  }
  const config = derive(result.data);
  const problems = derivedProblems(config);
  if (problems.length)
    throw new ConfigError(problems, fileExists ? file : 'built-in defaults and environment');
  return { config: deepFreeze(config), file, fileExists, overrides };
}
