/**
 * print: --print-config. Prints the effective configuration as YAML, durations and sizes in their
 * units, secrets masked (keys named like passwords, secrets or tokens, and passwords inside URLs).
 */
import YAML from 'yaml';
import type { MoatConfig } from './schema.js';
import { formatDuration } from './units.js';

const SECRET_KEY = /(password|secret|token|apikey|api_key)$/i;
const DURATION_KEY = /(timeout|delay|wait|ttl|age|window|interval|retention|lifetime|time|timelimit)$/i;
const SIZE_KEY = /(size|sizelimit|memorylimit|maxsize)$/i;

export function maskSecrets(key: string, value: unknown): unknown {
  if (typeof value === 'string') {
    if (SECRET_KEY.test(key) && value) return '********';
    return value.replace(/(\w+:\/\/[^:/@\s]*:)[^@\s]+@/g, '$1********@');
  }
  return value;
}

function render(key: string, value: unknown): unknown {
  if (Array.isArray(value)) return value.map((v) => render(key, v));
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, render(k, v)]));
  }
  if (typeof value === 'number' && DURATION_KEY.test(key)) return formatDuration(value);
  if (typeof value === 'number' && SIZE_KEY.test(key)) return value;
  return maskSecrets(key, value);
}

export function printConfig(config: Readonly<MoatConfig>): string {
  return YAML.stringify(render('', config));
}
