/**
 * @moat/smtp-listener: the SMTP listener of every Moat hop (see listener.ts for what it adds to
 * smtp-server), the reply type and table, the line-ending rule, Received headers and queue ids.
 */
export {
  createListener,
  HopServer,
  type Address,
  type DataInfo,
  type HopHandlers,
  type HopSession,
  type Listener,
  type ListenerOptions,
  type Transaction,
} from './listener.js';
export { formatReply, isPositive, listenerReplies, reply, SmtpError, type Reply } from './replies.js';
export { LineEndingNormalizer, MessageTooBig } from './line-endings.js';
export { hopReceived, newQueueId, receivedHeader, rfc5322Date, type ClientInfo } from './received.js';
export { ensureTlsCertificate } from './tls.js';
