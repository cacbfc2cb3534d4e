/**
 * screen: the port-25 front door (postscreen's role). Names follow postscreen's parameters without the
 * `postscreen_` prefix, with postscreen's defaults; an operator's main.cf values paste in as they are
 * (`dnsblSites: zen.spamhaus.org=127.0.0.[2..11]*3, list.dnswl.org=127.0.[0..255].[1..3]*-4`).
 */
import { parseSites } from '@moat/dnsbl';
import { z } from 'zod';
import { cidr, duration, formatDuration, hostPort, timer } from '../units.js';
import { LOOPBACK } from './common.js';

/** The tests screen runs, by the names their passes have in the reputation store. */
export const SCREEN_TESTS = ['pregreet', 'dnsbl', 'pipelining', 'non_smtp_command', 'bare_newline'] as const;

/** postscreen's three actions: log only / let the client talk and reject every RCPT / 521 and close. */
const action = (dflt: 'ignore' | 'enforce' | 'drop') => z.enum(['ignore', 'enforce', 'drop']).default(dflt);

/** A list written as a YAML list or as postscreen's comma/space separated text. */
const textList = (dflt: string[]) =>
  z
    .union([z.string(), z.array(z.string())])
    .transform((v) =>
      (Array.isArray(v) ? v : [v])
        .flatMap((s) => s.split(/[,\s]+/))
        .map((s) => s.trim())
        .filter((s) => s.length > 0),
    )
    .default(dflt);

/** Access-list entries keep their inner space (`permit 192.0.2.0/24`), so only commas separate them. */
const accessList = z
  .union([z.string(), z.array(z.string())])
  .transform((v) =>
    (Array.isArray(v) ? v : v.split(','))
      .map((s) => s.trim().replace(/\s+/g, ' '))
      .filter((s) => s.length > 0),
  )
  .refine(
    (list) =>
      list.every((e) =>
        /^(permit_mynetworks|(permit|reject|dunno) \S+|cidr:\/\S+|\S+ (permit|reject|dunno))$/i.test(e),
      ),
    {
      message:
        'expected entries like permit_mynetworks, permit 192.0.2.0/24, reject 198.51.100.7, dunno ::1, cidr:/path/file',
    },
  )
  .default(['permit_mynetworks']);

export const screen = z
  .strictObject({
    /** Public listener (port 25 in production; 2525 when not root). */
    listen: hostPort().default('0.0.0.0:2525'),
    /** greylist addresses (all replicas); empty = derived from greylist.listen. */
    next: z.array(hostPort()).default([]),
    /** Connecting to greylist; past it the client gets 421 4.3.2. */
    nextConnectTimeout: timer('5s'),
    /**
     * Pass each client that needs no more watching (passed, cached or allowlisted) to greylist's
     * handoverSocket, as postscreen passes clients to smtpd: greylist then talks to the client's own
     * connection and screen is out of the path. When the socket is not there (greylist on another
     * host, or in a container without the shared folder) or greylist is busy, the client is spliced
     * over TCP behind a PROXY v1 header instead. false: always splice.
     */
    handover: z.boolean().default(true),

    // --- permanent access list (postscreen_access_list, postscreen_denylist_action) ---
    /**
     * Evaluated in order, first match wins: permit_mynetworks, `permit|reject|dunno <cidr>`, and
     * `cidr:/path/file` (Postfix cidr table lines `<cidr> permit|reject|dunno`, re-read when the file
     * changes; a dunno inside a table goes on to the next entry). Default as Postfix: permit_mynetworks.
     */
    accessList,
    /** What a `reject` match does (postscreen_denylist_action). */
    accessAction: action('ignore'),

    // --- greet wait and pregreet (postscreen_greet_*) ---
    /** The `220-` teaser sent before the wait; undefined = `<hostname> ESMTP`, '' = no teaser. */
    greetBanner: z.string().optional(),
    /**
     * How long the tests before the greeting may take; bytes sent within it fail pregreet. At least
     * 100ms: the DNSBL answers are waited for within it too (0 turned DNSBL off).
     */
    greetWait: timer('6s', 100),
    /** What a pregreeting client gets (postscreen_greet_action). */
    greetAction: action('ignore'),
    /** How long a pregreet pass is remembered (postscreen_greet_ttl). */
    greetTtl: duration('1d'),

    // --- DNSBL/DNSWL scoring (postscreen_dnsbl_*) ---
    /** postscreen_dnsbl_sites verbatim: `zone[=filter][*weight]`, comma or space separated; empty = off. */
    dnsblSites: textList([]).superRefine((sites, ctx) => {
      // the same parser screen uses, so a typo stops the service at start with the key named
      try {
        parseSites(sites);
      } catch (err) {
        ctx.addIssue({ code: 'custom', message: (err as Error).message });
      }
    }),
    /** A total score at or above it blocks (postscreen_dnsbl_threshold). */
    dnsblThreshold: z.number().int().default(1),
    /** Negative: a total at or below it skips every other test (DNSWL trust); 0 = off. */
    dnsblAllowlistThreshold: z.number().int().max(0).default(0),
    /** What a listed client gets (postscreen_dnsbl_action). */
    dnsblAction: action('ignore'),
    /** Per DNS lookup; a timeout is never a listing (postscreen_dnsbl_timeout). */
    dnsblTimeout: timer('10s'),
    /** Shortest time a DNSBL result is remembered (postscreen_dnsbl_min_ttl). */
    dnsblMinTtl: duration('60s'),
    /** Longest time a DNSBL result is remembered (postscreen_dnsbl_max_ttl). */
    dnsblMaxTtl: duration('1h'),
    /** Secret zone name -> name shown in replies and logs (postscreen_dnsbl_reply_map). */
    dnsblReplyMap: z.record(z.string(), z.string()).default({}),
    /** How often every zone's test points (127.0.0.2 listed, 127.0.0.1 not) are checked again. */
    dnsblTestInterval: timer('30m'),

    // --- deep protocol tests, watched on the spliced session (no reconnect) ---
    /** Fail a client that sends a command before the reply to a command that must end a group. */
    pipeliningEnable: z.boolean().default(false),
    /** postscreen_pipelining_action. */
    pipeliningAction: action('enforce'),
    /** postscreen_pipelining_ttl. */
    pipeliningTtl: duration('30d'),
    /** Fail a client that sends a forbidden command (CONNECT, GET, POST) or a `Header:` line. */
    nonSmtpCommandEnable: z.boolean().default(false),
    /** postscreen_non_smtp_command_action. */
    nonSmtpCommandAction: action('drop'),
    /** postscreen_non_smtp_command_ttl. */
    nonSmtpCommandTtl: duration('30d'),
    /** Fail a client that ends a command line with LF alone. */
    bareNewlineEnable: z.boolean().default(false),
    /** postscreen_bare_newline_action. */
    bareNewlineAction: action('ignore'),
    /** postscreen_bare_newline_ttl. */
    bareNewlineTtl: duration('30d'),
    /** Commands that fail the non-SMTP test (postscreen_forbidden_commands). */
    forbiddenCommands: textList(['CONNECT', 'GET', 'POST']),

    // --- the enforce engine and limits ---
    /** Commands the enforce engine answers before it closes (postscreen_command_count_limit). */
    commandCountLimit: z.number().int().min(1).default(20),
    /** Deadline for each command line in the enforce engine, not reset by partial input. */
    commandTimeLimit: timer('300s'),
    /** Open connections per client address; 0 = none (postscreen_client_connection_count_limit). */
    clientConnectionCountLimit: z.number().int().min(0).default(50),
    /** Clients being screened at once; past it 421 4.3.2 (postscreen_pre_queue_limit). */
    preQueueLimit: z.number().int().min(1).default(100),

    // --- the pass cache, in the shared reputation store (top-level `store`) ---
    /** Expired entries are kept this long, so returning clients are not NEW (cache_retention_time). */
    cacheRetention: duration('7d'),
    /** How often expired entries are dropped; 0 = never (postscreen_cache_cleanup_interval). */
    cacheCleanupInterval: timer('12h'),

    // --- behind a load balancer (postscreen_upstream_proxy_*) ---
    /** 'haproxy': trusted peers put a PROXY v1 or v2 header first; '' = clients connect directly. */
    upstreamProxyProtocol: z.enum(['', 'haproxy']).default(''),
    /** Peers whose PROXY header is believed; anyone else is screened by its own address. */
    upstreamProxyPeers: z.array(cidr()).default(LOOPBACK),
    /** Deadline for the whole PROXY header (postscreen_upstream_proxy_timeout). */
    upstreamProxyTimeout: timer('5s'),
  })
  .superRefine((s, ctx) => {
    if (s.dnsblMinTtl > s.dnsblMaxTtl)
      ctx.addIssue({
        code: 'custom',
        path: ['dnsblMinTtl'],
        message: `must not be above screen.dnsblMaxTtl (${formatDuration(s.dnsblMaxTtl)})`,
      });
  })
  .prefault({});
