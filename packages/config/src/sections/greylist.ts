/**
 * greylist: the MX smtpd behind screen (relay checks, limits, STARTTLS) and Postgrey's rules applied
 * at RCPT, plus the optional Postfix policy port. Greylisting keys keep Postgrey's option names (in
 * camelCase) and defaults: --delay=300, --retry-window=2d, --max-age=35d, --auto-whitelist-clients=5,
 * --lookup-by-subnet with --ipv4cidr=24 and --ipv6cidr=64, --greylist-text, --x-greylist-header.
 */
import { z } from 'zod';
import { cidr, duration, hostPort, size, timer } from '../units.js';
import { internalListener, nextHop, peerList } from './hop.js';
import { SCREEN_TESTS } from './screen.js';

export const greylist = z
  .strictObject({
    ...internalListener('127.0.0.1:10023'),
    /** Peers that put a PROXY v1 header first (screen's addresses); empty = the same as peers. */
    proxyPeers: z.array(cidr()).default([]),
    /**
     * Unix socket (SOCK_SEQPACKET) that takes clients handed over by screen (screen.handover); created mode
     * 0600, so only this user's processes can hand clients over. Each replica needs its own path.
     * Empty = <dataDir>/run/greylist.sock.
     */
    handoverSocket: z.string().default(''),
    ...nextHop(),
    /**
     * Largest message accepted, in bytes (Postfix: message_size_limit). Over it: 552 5.3.4. At least 1:
     * Postfix reads 0 as unlimited; here 0 (or less) is refused at start, as simpler and clearer than a
     * second meaning (there is no unlimited: every hop and the scanners need a bound).
     */
    messageSizeLimit: size('50MB', 1),
    /** Recipients per message (Postfix: smtpd_recipient_limit). Past it: 452 4.5.3. */
    recipientLimit: z.number().int().min(1).default(1000),
    /**
     * 4xx and 5xx replies a client may have in one session without a message accepted; the next command
     * then gets `421 4.7.0 <hostname> Error: too many errors` and the session ends (Postfix:
     * smtpd_hard_error_limit, 20): relay probing and address harvesting stop there. 0: no limit.
     */
    hardErrorLimit: z.number().int().min(0).default(20),
    /**
     * Client sessions open at once, handed over and spliced together (Postfix: the smtpd process limit);
     * past it a new client gets `421 4.3.2 All server ports are busy`, as postscreen says when smtpd is
     * full. Postfix's default is 100 processes; a session here costs tens of kilobytes, so the default
     * is 1000, which also keeps a flood of clients that pass screen from serving no one else. Keep it
     * under half the process's open-file limit: a session in a transaction also holds a connection to
     * filter.
     */
    maxClients: z.number().int().min(1).default(1000),
    /** Idle client between commands (Postfix: smtpd_timeout). */
    idleTimeout: timer('300s'),

    /** Greylisting on or off; relay protection, known recipients and limits apply either way. */
    enabled: z.boolean().default(true),
    /** Key the triplet on the client's network (Postgrey --lookup-by-subnet) or its exact address (--lookup-by-host). */
    lookupBy: z.enum(['subnet', 'host']).default('subnet'),
    /** IPv4 prefix length of the client network with lookupBy: subnet (Postgrey --ipv4cidr). */
    ipv4Cidr: z.number().int().min(1).max(32).default(24),
    /** IPv6 prefix length of the client network with lookupBy: subnet (Postgrey --ipv6cidr). */
    ipv6Cidr: z.number().int().min(1).max(128).default(64),
    /** A new triplet passes once it retries this long after first sight (Postgrey --delay). */
    delay: duration('300s'),
    /** A first retry later than this after first sight starts over (Postgrey --retry-window). */
    retryWindow: duration('2d'),
    /** Triplets and AWL entries unseen this long are forgotten (Postgrey --max-age). */
    maxAge: duration('35d'),
    /** First passes (counted once an hour per exact client address) before a client skips greylisting; 0 = off (Postgrey --auto-whitelist-clients). */
    autoWhitelistClients: z.number().int().min(0).default(5),
    /** Text of the 451 reply (Postgrey --greylist-text): %s = seconds left, %r = recipient domain. Empty = "Greylisted, see <helpUrl>". */
    text: z.string().default(''),
    /** Where the default text sends senders; %r = recipient domain. */
    helpUrl: z.string().default('http://postgrey.schweikert.ch/help/%r.html'),
    /** Header added on a triplet's first pass (Postgrey --x-greylist-header): %t delay, %h host name, %d date, %v version. Empty = none. */
    xGreylistHeader: z.string().default('X-Greylist: delayed %t seconds by moat-greylist at %h; %d'),
    /** Client whitelist entries: host-name domain (and its subdomains), IP, IP prefix, CIDR or /regexp/ (Postgrey whitelist_clients). */
    whitelistClients: z.array(z.string()).default([]),
    /** Files of client entries (one a line, # comments), reloaded when they change (Postgrey --whitelist-clients). */
    whitelistClientsFiles: z.array(z.string()).default([]),
    /** Recipient whitelist entries: domain (and subdomains), name@, name@domain or /regexp/ (Postgrey whitelist_recipients). */
    whitelistRecipients: z.array(z.string()).default([]),
    /** Files of recipient entries, reloaded when they change (Postgrey --whitelist-recipients). */
    whitelistRecipientsFiles: z.array(z.string()).default([]),
    /** Also use the list of well-known senders that retry from pools shipped with moat (apps/greylist/lists/whitelist_clients). */
    useDefaultWhitelist: z.boolean().default(true),
    /**
     * Reverse lookup of the client (PTR, then forward-confirmed A/AAAA, through dns.servers) so that
     * host-name whitelist entries can match: once per client address, cached, never longer than
     * dns.timeout; a failure only means "no name". Not needed on the policy port (Postfix sends client_name).
     */
    reverseLookup: z.boolean().default(true),
    /** Skip greylisting for a client screen trusts: unexpired DNSWL trust with a negative score in the shared store. */
    trustScreen: z.boolean().default(true),
    /**
     * Screen tests whose unexpired pass (of every one listed) also counts as trust: pregreet, dnsbl,
     * pipelining, non_smtp_command, bare_newline (e.g. [pipelining, non_smtp_command, bare_newline]);
     * empty = DNSWL only.
     */
    trustScreenTests: z.array(z.enum(SCREEN_TESTS)).default([]),
    /** Key the triplet on the sender's domain instead of the client network when the client passes the domain's SPF (a pool's retry from another address then passes). */
    spfKeying: z.boolean().default(true),
    /** How long an SPF answer for (client, domain) is reused. */
    spfCacheTtl: duration('10m'),
    /** How long an operator's approval of a pending triplet holds (`moat-greylist approve`). */
    approveTtl: duration('1d'),
    /** Optional Postfix policy delegation listener (Postgrey --inet), e.g. 127.0.0.1:10040; empty = off. */
    policyListen: z.union([z.literal(''), hostPort()]).default(''),
    /** Who may connect to the policy port (CIDR); never empty (no one could use the port). */
    policyPeers: peerList(),
    /** Deadline of every call to the reputation store; past it: 451 4.3.0. */
    storeTimeout: timer('1s'),
    /**
     * How often expired triplets and AWL entries are removed (in small batches, mail keeps flowing). At
     * least 1s: there is no "never", the store would only grow.
     */
    maintenanceInterval: timer('1h', 1000),
  })
  .prefault({});
