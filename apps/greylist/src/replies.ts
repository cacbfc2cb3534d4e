/**
 * replies: the MX smtpd's own texts (Postfix's words, so operators' greps keep working).
 *
 *   554 5.7.1 <rcpt>: Relay access denied                                        reject_unauth_destination
 *   550 5.1.1 <rcpt>: Recipient address rejected: User unknown in local recipient table
 *   451 4.7.1 <rcpt>: Recipient address rejected: Greylisted, see <url>            greylisting (Postgrey text)
 *   451 4.3.0 <rcpt>: Temporary lookup failure                                     the store did not answer
 */
import { reply } from '@moat/smtp-listener';

export const greylistReplies = {
  relayDenied: (rcpt: string) => reply(554, '5.7.1', `<${rcpt}>: Relay access denied`),
  unknownUser: (rcpt: string) =>
    reply(550, '5.1.1', `<${rcpt}>: Recipient address rejected: User unknown in local recipient table`),
  greylisted: (rcpt: string, text: string) =>
    reply(451, '4.7.1', `<${rcpt}>: Recipient address rejected: ${text}`),
  storeFailed: (rcpt: string) => reply(451, '4.3.0', `<${rcpt}>: Temporary lookup failure`),
} as const;
