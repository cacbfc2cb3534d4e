/**
 * address: where spamd listens. Exports SpamdAddress ({ host, port } or { socketPath }),
 * parseSpamdAddress ('host:port', '[::1]:783', 'host', '/run/spamd.sock', 'unix:/run/spamd.sock')
 * and formatSpamdAddress (the inverse, used in every error message). Promises: an address that
 * cannot be used is a SpamdError of kind 'input', never a connection attempt.
 */
import { SpamdError } from './errors.js';

/** spamd's default TCP port. */
export const SPAMD_DEFAULT_PORT = 783;

export type SpamdAddress = { host: string; port: number } | { socketPath: string };

function invalid(text: string, why: string): SpamdError {
  return new SpamdError(`invalid spamd address ${JSON.stringify(text)}: ${why}`, {
    kind: 'input',
    phase: 'prepare',
    address: text,
    command: '',
  });
}

function port(text: string, value: string): number {
  if (!/^\d{1,5}$/.test(value) || Number(value) < 1 || Number(value) > 65535) {
    throw invalid(text, 'the port must be 1-65535');
  }
  return Number(value);
}

/**
 * 'host:port' or '[v6]:port' (TCP; port defaults to 783), '/path' or 'unix:/path' (a unix socket).
 */
export function parseSpamdAddress(text: string): SpamdAddress {
  const s = text.trim();
  if (s.startsWith('unix:')) {
    const socketPath = s.slice('unix:'.length);
    if (!socketPath) throw invalid(text, 'no socket path');
    return { socketPath };
  }
  if (s.startsWith('/') || s.startsWith('./')) return { socketPath: s };
  const v6 = /^\[([0-9a-fA-F:.%\w]+)\](?::(\w*))?$/.exec(s);
  if (v6) return { host: v6[1]!, port: v6[2] === undefined ? SPAMD_DEFAULT_PORT : port(text, v6[2]) };
  if (!s) throw invalid(text, 'empty');
  const colons = s.split(':').length - 1;
  if (colons > 1) throw invalid(text, 'write an IPv6 address in brackets: [::1]:783');
  const [host, p] = s.split(':') as [string, string | undefined];
  if (!host) throw invalid(text, 'no host');
  return { host, port: p === undefined ? SPAMD_DEFAULT_PORT : port(text, p) };
}

/** 'host:port', '[v6]:port' or 'unix:/path'. */
export function formatSpamdAddress(address: SpamdAddress): string {
  if ('socketPath' in address) return `unix:${address.socketPath}`;
  return address.host.includes(':') ? `[${address.host}]:${address.port}` : `${address.host}:${address.port}`;
}

/** Checks an address object given directly (not parsed); returns it. */
export function checkSpamdAddress(address: SpamdAddress): SpamdAddress {
  if ('socketPath' in address) {
    if (typeof address.socketPath !== 'string' || !address.socketPath) {
      throw invalid(String(address.socketPath), 'no socket path');
    }
    return address;
  }
  const text = formatSpamdAddress(address);
  if (typeof address.host !== 'string' || !address.host) throw invalid(text, 'no host');
  if (!Number.isInteger(address.port) || address.port < 1 || address.port > 65535) {
    throw invalid(text, 'the port must be 1-65535');
  }
  return address;
}
