/**
 * replies: what a hop tells its client when the next hop fails. Always 4xx: the client keeps the
 * message and retries. Details (which hop, which error) go to the log, not to the internet.
 */
import { reply } from '@moat/smtp-listener';

export const relayReplies = {
  unavailable: () => reply(451, '4.4.1', 'Error: next hop unavailable, try again later'),
  timeout: () => reply(451, '4.4.2', 'Error: timeout waiting for next hop, try again later'),
  lost: () => reply(451, '4.4.2', 'Error: connection to next hop lost, try again later'),
  protocol: () => reply(451, '4.3.0', 'Error: next hop protocol error, try again later'),
  /** Some recipients accepted and some refused by the next hop where one reply must cover all. */
  mixed: () => reply(451, '4.3.0', 'Error: next hop refused some recipients, try again later'),
} as const;
