/**
 * @moat/smtp-relay: the hop-to-hop SMTP client. Our own, because nodemailer's client has no XFORWARD
 * and writes line by line; this one pools persistent connections, pipelines, writes the body in large
 * dot-stuffed chunks with the final dot in the last write, and hands back the next hop's exact reply.
 */
export {
  RelayConnection,
  RelayError,
  parseCapabilities,
  type Capabilities,
  type RelayFailure,
} from './connection.js';
export { poolFor, RelayPool, type PoolOptions } from './pool.js';
export { RelayTransaction, type Envelope, type Reservation } from './transaction.js';
export { relayReplies } from './replies.js';
export { DotStuffer } from './dot-stuff.js';
export { ReplyParser } from './reply-parser.js';
export { xforwardCommands } from './xforward.js';
