/**
 * schema: the whole of moat.yaml as one zod schema, and the derived defaults (next hops follow the
 * next service's listen address, folders follow dataDir). Every service validates the whole file, so a
 * mistake in any section stops every service with the same message.
 */
import path from 'node:path';
import { z } from 'zod';
import { common } from './sections/common.js';
import { delivery } from './sections/delivery.js';
import { filter } from './sections/filter.js';
import { greylist } from './sections/greylist.js';
import { quarantine } from './sections/quarantine.js';
import { screen } from './sections/screen.js';
import { formatHostPort, parseHostPort } from './units.js';

export const schema = z.strictObject({
  ...common,
  screen,
  greylist,
  filter,
  delivery,
  quarantine,
});

export type MoatConfig = z.output<typeof schema>;

/** The address a client uses to reach a listener: a wildcard bind is reached on loopback. */
export function connectAddress(listen: string): string {
  const hp = parseHostPort(listen)!;
  const host = hp.host === '0.0.0.0' ? '127.0.0.1' : hp.host === '::' ? '::1' : hp.host;
  return formatHostPort({ host, port: hp.port });
}

/** Fills in the defaults that depend on other keys. */
export function derive(c: MoatConfig): MoatConfig {
  const dataDir = path.resolve(c.dataDir);
  const orDefault = (list: string[], listen: string) => (list.length ? list : [connectAddress(listen)]);
  return {
    ...c,
    dataDir,
    screen: { ...c.screen, next: orDefault(c.screen.next, c.greylist.listen) },
    greylist: {
      ...c.greylist,
      next: orDefault(c.greylist.next, c.filter.listen),
      proxyPeers: c.greylist.proxyPeers.length ? c.greylist.proxyPeers : c.greylist.peers,
      handoverSocket: path.resolve(c.greylist.handoverSocket || path.join(dataDir, 'run', 'greylist.sock')),
    },
    filter: {
      ...c.filter,
      next: orDefault(c.filter.next, c.delivery.listen),
      quarantine: orDefault(c.filter.quarantine, c.quarantine.listen),
    },
    delivery: {
      ...c.delivery,
      maildir: path.resolve(c.delivery.maildir || path.join(dataDir, 'mail')),
      queueDir: path.resolve(c.delivery.queueDir || path.join(dataDir, 'queue')),
    },
    quarantine: {
      ...c.quarantine,
      next: orDefault(c.quarantine.next, c.delivery.listen),
      storeDir: path.resolve(c.quarantine.storeDir || path.join(dataDir, 'quarantine')),
    },
  };
}

/** The longest path a Unix socket can be bound at on Linux (sun_path holds 108 bytes with its NUL). */
const MAX_SOCKET_PATH = 107;

/** Problems only the derived values show (a default that depends on another key), one per key. */
export function derivedProblems(c: MoatConfig): string[] {
  const problems: string[] = [];
  const at = c.greylist.handoverSocket;
  if (c.screen.handover && Buffer.byteLength(at) > MAX_SOCKET_PATH) {
    problems.push(
      `greylist.handoverSocket: ${at} is ${Buffer.byteLength(at)} bytes; a Unix socket path can have at most ` +
        `${MAX_SOCKET_PATH} (set a shorter greylist.handoverSocket or dataDir, or screen.handover: false)`,
    );
  }
  return problems;
}

/**
 * The size limit of the internal hops (filter, quarantine, delivery): what greylist accepted plus room
 * for the headers the hops add on the way, so no internal hop refuses what the MX accepted.
 */
export function internalSizeLimit(c: Readonly<MoatConfig>): number {
  return c.greylist.messageSizeLimit + 1024 * 1024;
}
