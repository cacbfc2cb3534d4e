/**
 * replies: every reply the filter itself gives, in amavis' words (`554 5.7.0 Reject, id=<id> - INFECTED:
 * <name>`), so operators can grep for them. A pass is not here: it is delivery's own reply, relayed.
 */
import { reply, type Reply } from '@moat/smtp-listener';

export const filterReplies = {
  /** A positive finding, rejected in the sender's session. */
  reject: (id: string, reason: string) => reply(554, '5.7.0', `Reject, id=${id} - ${reason}`),
  /** A bad header section rejected (8-bit data has its own enhanced code, as amavis). */
  rejectBadHeader: (id: string, reason: string, eightBit: boolean) =>
    reply(554, eightBit ? '5.6.3' : '5.6.0', `Reject, id=${id} - ${reason}`),
  rejectOversized: (id: string) => reply(552, '5.3.4', `Reject, id=${id} - OVERSIZED`),
  /** Accepted and dropped (amavis' D_DISCARD). */
  discard: (id: string, reason: string) => reply(250, '2.7.0', `Ok, discarded, id=${id} - ${reason}`),
  /** A scanner failed, was too slow, or hit a limit: try again (amavis' $virus_scanners_failure_is_fatal). */
  unchecked: (id: string, what: string) =>
    reply(451, '4.3.0', `Try again later, id=${id} - UNCHECKED: ${what}`),
  /** A destiny of tempfail chosen by the operator for a category. */
  tempfail: (id: string, reason: string) => reply(451, '4.7.1', `Try again later, id=${id} - ${reason}`),
  /** Quarantine did not take the message: nobody is answered 5xx or 250 without the copy kept. */
  quarantineFailed: (id: string) =>
    reply(451, '4.3.0', `Error: quarantine unavailable, try again later, id=${id}`),
  /** The message could not be spooled (the disk is full or failing): nothing was scanned or forwarded. */
  spoolFailed: (id: string) => reply(451, '4.3.0', `Error: spool write error, try again later, id=${id}`),
  /** The previous hop left before the verdict: nothing was forwarded (nobody reads this reply). */
  clientGone: (id: string) => reply(451, '4.4.2', `Error: connection lost before the verdict, id=${id}`),
} as const satisfies Record<string, (...args: never[]) => Reply>;
