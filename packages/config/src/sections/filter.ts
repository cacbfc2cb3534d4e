/**
 * filter: the content filter on 10024 (amavisd-new's role): clamd and spamd in parallel on the spooled
 * message, banned files, bad headers, then one verdict with amavis' levels, categories and destinies.
 * Names follow amavis' without the `$sa_`/`$final_` prefixes, with the sample amavisd.conf's values.
 */
import { z } from 'zod';
import { hostPort, parseHostPort, size, timer } from '../units.js';
import { internalListener, nextHop } from './hop.js';

/**
 * A scanner daemon: `host:port`, a unix socket path (`/run/clamav/clamd.ctl`), or `managed`: npm start
 * runs the daemon itself under dataDir/daemons and hands the filter its address (a filter started on
 * its own refuses `managed`). clamd has no "off": a message is never passed without a virus scan.
 * spamd may be `off` (no spam scoring at all, recorded as `spam=pass (skipped: spamd off)` in each
 * message's X-Moat-Results, as amavis without a spam scanner): for machines too small for spamd.
 */
const scanner = (what: string, off = false) =>
  z
    .string()
    .refine(
      (v) => v === 'managed' || (off && v === 'off') || v.startsWith('/') || parseHostPort(v) !== undefined,
      { message: `expected host:port, a socket path${off ? ', managed or off' : ' or managed'} (${what})` },
    )
    .default('managed');

/** The content categories, in amavis' priority order (the first one present decides). */
export const FILTER_CATEGORIES = [
  'virus',
  'banned',
  'unchecked',
  'spam',
  'spammy',
  'badHeader',
  'oversized',
  'clean',
] as const;

/**
 * A destiny: `pass`, `reject`, `discard` or `tempfail`, optionally with `+quarantine` (a copy with its
 * verdict goes to quarantine first), e.g. `reject+quarantine`, `discard+quarantine`, `pass+quarantine`.
 */
const destiny = z
  .string()
  .regex(
    /^(pass|reject|discard|tempfail)(\+quarantine)?$|^quarantine\+(pass|reject|discard)$/,
    'expected pass, reject, discard or tempfail, optionally +quarantine (e.g. reject+quarantine)',
  );

const destinies = z
  .strictObject({
    virus: destiny.default('reject+quarantine'),
    banned: destiny.default('reject+quarantine'),
    spam: destiny.default('reject+quarantine'),
    spammy: destiny.default('pass'),
    badHeader: destiny.default('pass'),
    oversized: destiny.default('pass'),
    clean: destiny.default('pass'),
  })
  .prefault({});

const level = (dflt: number) => z.number().default(dflt);

/** Per-recipient-domain overrides (amavis' policy banks, looked up by the recipient's domain). */
const policyBank = z.strictObject({
  tagLevel: z.number().optional(),
  tag2Level: z.number().optional(),
  killLevel: z.number().optional(),
  destinies: z
    .strictObject({
      virus: destiny.optional(),
      banned: destiny.optional(),
      spam: destiny.optional(),
      spammy: destiny.optional(),
      badHeader: destiny.optional(),
      oversized: destiny.optional(),
      clean: destiny.optional(),
    })
    .optional(),
});

/** amavis' sample $banned_filename_re, as `/regex/flags` strings; `allow /regex/` lets a match through. */
export const DEFAULT_BANNED_FILES = [
  '/^\\.(exe-ms|dll)$/',
  'allow /^\\.(rpm|cpio|tar)$/',
  '/.\\.(pif|scr)$/i',
  '/^application\\/x-msdownload$/i',
  '/^application\\/x-msdos-program$/i',
  '/^application\\/hta$/i',
  '/\\.[^./]*[A-Za-z][^./]*\\.\\s*(exe|vbs|pif|scr|bat|cmd|com|cpl|dll)[.\\s]*$/i',
  '/.\\.(exe|vbs|pif|scr|cpl)$/i',
];

const bannedRule = z.string().refine(
  (v) => {
    const m = /^(?:allow\s+)?\/(.*)\/([a-z]*)$/s.exec(v.trim());
    if (!m) return false;
    try {
      new RegExp(m[1]!, m[2]);
      return true;
    } catch {
      return false;
    }
  },
  { message: 'expected /regex/flags or allow /regex/flags' },
);

export const filter = z
  .strictObject({
    ...internalListener('127.0.0.1:10024'),
    ...nextHop(),
    /** quarantine addresses; empty = derived from quarantine.listen. */
    quarantine: z.array(hostPort()).default([]),
    /** Messages up to this size are spooled in memory, larger ones in a file under dataDir/filter. */
    spoolMemoryLimit: size('256k'),

    // --- scanners (each with its own timeout; an error or timeout is never a clean result) ---
    /** clamd, scanned with INSTREAM (its StreamMaxLength must cover greylist.messageSizeLimit). */
    clamd: scanner('clamd'),
    /** The whole clamd scan: connect, stream, verdict. */
    clamdTimeout: timer('60s'),
    /** spamd (SPAMC/1.5, REPORT). */
    spamd: scanner('spamd', true),
    /** The whole spamd request: connect, send, scan, response. */
    spamdTimeout: timer('60s'),
    /**
     * Of a larger message only the first this many bytes go to spamd (recorded as truncated), as
     * amavis' $sa_mail_body_size_limit (sample: 400k); padding a message past it does not skip scoring.
     * At least 1 byte (0 would send spamd nothing to score; `spamd: off` says that plainly).
     */
    spamMaxSize: size('512k', 1),
    /**
     * What a scanner failure (error, timeout, limit exceeded, encrypted archive) does to the message:
     * `tempfail` (451 4.3.0, amavis' $virus_scanners_failure_is_fatal) or `pass` (delivered with
     * ***UNCHECKED*** in the subject; logged on every message).
     */
    scannerFailure: z.enum(['tempfail', 'pass']).default('tempfail'),
    /** clamd's `Heuristics.Encrypted.*` findings: `unchecked` (a scanner failure) or `pass` (ignored). */
    encryptedArchives: z.enum(['unchecked', 'pass']).default('unchecked'),

    // --- levels (comparisons are >=; amavis' sample values) ---
    /** At or above it the X-Spam-* headers are added ($sa_tag_level_deflt; -999 = always). */
    tagLevel: level(2.0),
    /** At or above it: spammy, X-Spam-Flag: YES, the subject tag and X-Spam-Report. */
    tag2Level: level(6.2),
    /** At or above it: spam (the spam destiny applies). */
    killLevel: level(6.9),
    /**
     * $sa_dsn_cutoff_level. Moat answers in the sender's session and never sends a DSN itself; at or
     * above it the log line records `dsn: suppressed` (a sending MTA's bounce of our reject is its own).
     */
    dsnCutoffLevel: level(10),

    // --- destinies per category (unchecked is filter.scannerFailure) ---
    destinies,
    /** Prepended to the Subject at tag2 for local recipients ($sa_spam_subject_tag). */
    spamSubjectTag: z.string().default('***Spam*** '),
    /** Prepended to the Subject of mail passed unchecked (scannerFailure: pass). */
    uncheckedSubjectTag: z.string().default('***UNCHECKED*** '),

    // --- banned files ---
    /**
     * Ordered rules matched against every part's declared file name, declared MIME type and detected
     * type (`.exe-ms`, `.elf`, `.zip`, ... from magic bytes), and those of the archives it sits in; the
     * first matching rule decides (`allow` = not banned). An encrypted part also matches `UNDECIPHERABLE`.
     */
    bannedFiles: z.array(bannedRule).default(DEFAULT_BANNED_FILES),
    /** How deep archives inside archives are opened ($MAXLEVELS). */
    archiveMaxDepth: z.number().int().min(0).max(20).default(4),
    /** Archives larger than this (decoded) are listed no further (clamd still scans them). */
    archiveMaxSize: size('10MB'),
    /** Archive entries looked at per message, all archives and nesting levels together ($MAXFILES). */
    archiveMaxFiles: z.number().int().min(1).default(1000),
    /**
     * Bytes decompressed from archive entries per message, all archives together ($MAX_EXPANSION_QUOTA):
     * past it the rest is not listed (clamd still scans the message).
     */
    archiveMaxExpansion: size('100MB'),

    // --- policy banks and bypass ---
    /** Per recipient domain: levels and destinies, e.g. `{ "lists.example.test": { killLevel: 12 } }`. */
    policyBanks: z.record(z.string(), policyBank).default({}),
    /**
     * Recipients (`user@domain`, or `@domain`) who receive everything, tagged (amavis' *_lovers): checks
     * and headers as usual, destiny pass. A scanner failure still follows scannerFailure.
     */
    bypass: z.array(z.string().transform((s) => s.toLowerCase())).default([]),
  })
  .prefault({});
