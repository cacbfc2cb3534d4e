/**
 * units: Postfix-style durations ("300s", "5m", "1d") and sizes ("50MB", "10240000"), and
 * listening/next-hop addresses ("127.0.0.1:10024", "[::1]:25"), parsed once at start-up.
 *
 * Exports the zod types used by every section: duration(), timer() (a duration used as a timer
 * delay, at most 24d), size(), hostPort(), cidr().
 * A value that does not parse is a config error naming the key; nothing here throws later.
 */
import net from 'node:net';
import { z } from 'zod';

const DURATION_UNITS: Record<string, number> = {
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
  w: 7 * 86_400_000,
};

/** Parses "300s", "5m", "1h", "1d", "1w", "250ms"; a bare number means seconds, as in Postfix. */
export function parseDuration(value: string | number): number | undefined {
  if (typeof value === 'number') return Number.isFinite(value) && value >= 0 ? value * 1000 : undefined;
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$/i.exec(value);
  if (!m) return undefined;
  const unit = (m[2] ?? 's').toLowerCase();
  return Math.round(Number(m[1]) * (DURATION_UNITS[unit] ?? 1000));
}

/** Formats milliseconds back into the shortest exact unit string ("300s", "5m", "1d"). */
export function formatDuration(ms: number): string {
  for (const unit of ['w', 'd', 'h', 'm', 's'] as const) {
    const size = DURATION_UNITS[unit]!;
    if (ms >= size && ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${ms}ms`;
}

const SIZE_UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  k: 1024,
  kb: 1024,
  m: 1024 ** 2,
  mb: 1024 ** 2,
  g: 1024 ** 3,
  gb: 1024 ** 3,
};

/** Parses "52428800", "50MB", "512k" (binary multiples, as operators expect from "50 MB" limits). */
export function parseSize(value: string | number): number | undefined {
  if (typeof value === 'number') return Number.isInteger(value) && value >= 0 ? value : undefined;
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmg]?b?)\s*$/i.exec(value);
  if (!m) return undefined;
  const mult = SIZE_UNITS[(m[2] ?? '').toLowerCase()];
  return mult === undefined ? undefined : Math.round(Number(m[1]) * mult);
}

export interface HostPort {
  host: string;
  port: number;
}

/** Parses "host:port" or "[v6]:port". */
export function parseHostPort(value: string): HostPort | undefined {
  const m = /^\s*(?:\[([^\]]+)\]|([^:\s]+)):(\d{1,5})\s*$/.exec(value);
  if (!m) return undefined;
  const port = Number(m[3]);
  if (port > 65535) return undefined;
  return { host: (m[1] ?? m[2])!, port };
}

export function formatHostPort(hp: HostPort): string {
  return net.isIPv6(hp.host) ? `[${hp.host}]:${hp.port}` : `${hp.host}:${hp.port}`;
}

/**
 * The longest delay a Node timer (setTimeout, setInterval, socket.setTimeout) holds is 2^31-1 ms (about
 * 24.8 days); a longer one fires after 1 ms. A duration used as a timer delay is bounded by this, in
 * whole days so the message reads as the operator writes it.
 */
export const MAX_TIMER_MS = 24 * DURATION_UNITS.d!;

/**
 * A duration in milliseconds, written as a Postfix-style string in the file. `max` bounds it (in ms):
 * a key used as a timer delay uses timer() below; a lifetime only used in arithmetic needs none.
 */
export const duration = (dflt: string, max?: number, min?: number) =>
  z
    .union([z.string(), z.number()])
    .transform((v, ctx) => {
      const ms = parseDuration(v);
      if (ms === undefined) {
        ctx.addIssue({
          code: 'custom',
          message: `expected a duration like 300s, 5m or 1d, got ${JSON.stringify(v)}`,
        });
        return z.NEVER;
      }
      if (min !== undefined && ms < min) {
        ctx.addIssue({
          code: 'custom',
          message: `expected at least ${formatDuration(min)}, got ${JSON.stringify(v)}`,
        });
        return z.NEVER;
      }
      if (max !== undefined && ms > max) {
        ctx.addIssue({
          code: 'custom',
          message: `expected at most ${formatDuration(max)}, got ${JSON.stringify(v)}`,
        });
        return z.NEVER;
      }
      return ms;
    })
    .prefault(dflt);

/**
 * A duration used as a timer delay (a timeout or an interval): at most MAX_TIMER_MS (24d), and at least
 * `min` where 0 would make an interval run every millisecond.
 */
export const timer = (dflt: string, min?: number) => duration(dflt, MAX_TIMER_MS, min);

/** A size in bytes; `min` refuses smaller ones (a limit where 0 would refuse everything). */
export const size = (dflt: string | number, min = 0) =>
  z
    .union([z.string(), z.number()])
    .transform((v, ctx) => {
      const bytes = parseSize(v);
      if (bytes === undefined) {
        ctx.addIssue({
          code: 'custom',
          message: `expected a size like 52428800, 50MB or 512k, got ${JSON.stringify(v)}`,
        });
        return z.NEVER;
      }
      if (bytes < min) {
        ctx.addIssue({
          code: 'custom',
          message: `expected at least ${min} byte${min === 1 ? '' : 's'} (0 is not "unlimited" here), got ${JSON.stringify(v)}`,
        });
        return z.NEVER;
      }
      return bytes;
    })
    .prefault(dflt);

/** host:port, kept as the string the operator wrote (validated). */
export const hostPort = () =>
  z
    .string()
    .refine((v) => parseHostPort(v) !== undefined, { message: 'expected host:port, e.g. 127.0.0.1:10024' });

/** An IPv4/IPv6 network in CIDR notation or a single address ("127.0.0.0/8", "::1", "[::1]/128"). */
export const cidr = () =>
  z.string().refine((v) => parseCidr(v) !== undefined, {
    message: 'expected an address or a network like 127.0.0.0/8',
  });

export interface Cidr {
  address: string;
  family: 'ipv4' | 'ipv6';
  prefix: number;
}

/** Strips brackets and the IPv4-mapped IPv6 prefix, so "::ffff:127.0.0.1" is matched as 127.0.0.1. */
export function normalizeIp(ip: string): string {
  let addr = ip.trim();
  if (addr.startsWith('[') && addr.endsWith(']')) addr = addr.slice(1, -1);
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(addr);
  return (mapped ? mapped[1]! : addr).toLowerCase();
}

export function parseCidr(value: string): Cidr | undefined {
  const m = /^\s*(\[[^\]]+\]|[^/\s]+)(?:\/(\d{1,3}))?\s*$/.exec(value);
  if (!m) return undefined;
  const address = normalizeIp(m[1]!);
  const kind = net.isIP(address);
  if (!kind) return undefined;
  const max = kind === 4 ? 32 : 128;
  const prefix = m[2] === undefined ? max : Number(m[2]);
  if (prefix > max) return undefined;
  return { address, family: kind === 4 ? 'ipv4' : 'ipv6', prefix };
}

/** A set of networks to test addresses against (node's BlockList underneath). */
export class NetworkList {
  readonly #list = new net.BlockList();
  readonly #empty: boolean;
  constructor(networks: readonly string[]) {
    for (const n of networks) {
      const c = parseCidr(n);
      if (!c) throw new Error(`not a network: ${n}`);
      this.#list.addSubnet(c.address, c.prefix, c.family);
    }
    this.#empty = networks.length === 0;
  }
  // BlockList.check builds a SocketAddress per call (10-25 us); a peer asks several times per
  // connection, and peers are few, so answers are remembered (bounded)
  readonly #seen = new Map<string, boolean>();
  has(address: string): boolean {
    if (this.#empty) return false;
    let yes = this.#seen.get(address);
    if (yes === undefined) {
      const ip = normalizeIp(address);
      const kind = net.isIP(ip);
      yes = kind !== 0 && this.#list.check(ip, kind === 4 ? 'ipv4' : 'ipv6');
      if (this.#seen.size >= 4096) this.#seen.clear();
      this.#seen.set(address, yes);
    }
    return yes;
  }
}
