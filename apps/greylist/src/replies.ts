/**
 * replies: the MX smtpd's own texts (Postfix's words, so operators' greps keep working).
 */
import { reply } from '@moat/smtp-listener';

export const greylistReplies = {
  relayDenied: (rcpt: string) => reply(554, '5.7.1', `<${rcpt}>: Relay access denied`),
} as const;
