/**
 * print: --print-config. Prints the effective configuration as YAML, durations and sizes in their
 * units, secrets masked (keys named like passwords, secrets or tokens, passwords inside URLs, and
 * secret DNSBL zone names in screen.dnsblSites and screen.dnsblReplyMap).
 */
import YAML from 'yaml';
import type { MoatConfig } from './schema.js';
import { formatDuration } from './units.js';

const SECRET_KEY = /(password|secret|token|apikey|api_key)$/i;
const DURATION_KEY = /(timeout|delay|wait|ttl|age|window|interval|retention|lifetime|time|timelimit)$/i;
const SIZE_KEY = /(size|sizelimit|memorylimit|maxsize)$/i;

const MASK = '********';

export function maskSecrets(key: string, value: unknown): unknown {
  if (typeof value === 'string') {
    if (SECRET_KEY.test(key) && value) return MASK;
    // the password runs to the last '@' before the host, as a URL parser reads it (it may hold '@')
    return value.replace(/(\w+:\/\/[^:/@\s]*:)[^\s/?#]+@/g, `$1${MASK}@`);
  }
  return value;
}

/** A Spamhaus DQS zone holds the account's key in front of the list: <key>.zen.dq.spamhaus.net. */
const DQS_ZONE = /^\S+\.([a-z0-9-]+\.dq\.spamhaus\.net)\.?$/i;

/** A zone as the reply map keys it (dnsbl's checkDomain): lower case, no final dot. */
const zoneKey = (zone: string) => zone.toLowerCase().replace(/\.$/, '');

/**
 * A DNSBL zone name as printed: a DQS zone with its key masked, and any zone the reply map hides
 * (its keys are secret zone names, as the schema says) with all but its last two labels masked.
 */
function maskZone(zone: string, secret: ReadonlySet<string>): string {
  const dqs = DQS_ZONE.exec(zone);
  if (dqs) return `${MASK}.${dqs[1]}`;
  if (!secret.has(zoneKey(zone))) return zone;
  const labels = zone.split('.');
  return labels.length > 2 ? [MASK, ...labels.slice(-2)].join('.') : MASK;
}

function maskDnsbl(screen: MoatConfig['screen']): MoatConfig['screen'] {
  const map = Object.entries(screen.dnsblReplyMap);
  const secret = new Set(map.map(([zone]) => zoneKey(zone)));
  return {
    ...screen,
    // an entry is zone[=filter][*weight]
    dnsblSites: screen.dnsblSites.map((site) => site.replace(/^[^=*]+/, (zone) => maskZone(zone, secret))),
    dnsblReplyMap: Object.fromEntries(
      map.map(([zone, name]) => [maskZone(zone, secret), maskZone(name, secret)]),
    ),
  };
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
  return YAML.stringify(render('', { ...config, screen: maskDnsbl(config.screen) }));
}
