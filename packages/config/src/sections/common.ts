/**
 * common: the keys every service reads (identity, local domains, state, DNS, TLS, logging).
 */
import os from 'node:os';
import { domainToASCII } from 'node:url';
import { z } from 'zod';
import { cidr, hostPort, timer } from '../units.js';

export const LOOPBACK = ['127.0.0.0/8', '::1/128'];

export const common = {
  /** Used in banners, Received headers and X-* headers (Postfix: myhostname). */
  hostname: z
    .string()
    .regex(/^[A-Za-z0-9.-]+$/, 'expected a host name like mx.example.test')
    .default(os.hostname()),
  /**
   * Local domains: mail for these is accepted and delivered (Postfix: mydestination/virtual domains). An
   * internationalized one may be given as written (bücher.test) or as its A-label (xn--bcher-kva.test):
   * it is kept as the A-label, the form the MX compares addresses in.
   */
  domains: z
    .array(
      z
        .string()
        .transform((d) => (/^[\x21-\x7e]*$/.test(d) ? d : domainToASCII(d)).toLowerCase())
        .pipe(z.string().regex(/^[a-z0-9.-]+$/, 'expected a domain like example.test')),
    )
    .default(['example.test']),
  /**
   * Known recipients (Postfix: local_recipient_maps): addresses and `@domain` catch-alls. When this or
   * recipientsFiles is set, an unknown address in a local domain gets 550 5.1.1; when both are empty,
   * every address in `domains` is accepted.
   */
  recipients: z.array(z.string()).default([]),
  /** Files of known recipients (one a line, # comments), reloaded when they change. */
  recipientsFiles: z.array(z.string()).default([]),
  /** All embedded state lives under it (spools, queue, SQLite, generated TLS certificate). */
  dataDir: z.string().min(1).default('./data'),
  /**
   * The reputation store screen and greylist share: `sqlite` (a file under dataDir, for one machine) or
   * `redis://host:port/db` (for replicas on several machines).
   */
  store: z
    .string()
    .regex(/^(sqlite|rediss?:\/\/.+)$/, 'expected sqlite or redis://host:port/db')
    .default('sqlite'),
  /** Networks treated as our own clients (Postfix: mynetworks), used by permit_mynetworks. */
  mynetworks: z.array(cidr()).default(LOOPBACK),
  dns: z
    .strictObject({
      /** Resolver addresses (host:port); empty = the system resolver. */
      servers: z.array(hostPort()).default([]),
      /** Per query. */
      timeout: timer('5s'),
    })
    .prefault({}),
  tls: z
    .strictObject({
      /** PEM certificate chain for STARTTLS; empty = a self-signed one generated under dataDir/tls. */
      cert: z.string().default(''),
      /** PEM private key for cert. */
      key: z.string().default(''),
    })
    .prefault({}),
  log: z
    .strictObject({
      level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
    })
    .prefault({}),
};
