/**
 * @moat/spool: durable files (write, fsync, rename, fsync the directory, group-committed) and the
 * bounded message spool a hop keeps while it scans or forwards a message.
 */
export {
  removeDurable,
  removeLazily,
  renameDurable,
  syncDir,
  tmpName,
  writeDurable,
  type DurableWriteResult,
} from './durable.js';
export { MessageSpool } from './message-spool.js';
export {
  encodeHead,
  messageStream,
  readEnvelopeHead,
  writeEnvelopeFile,
  type EnvelopeFileHead,
} from './envelope-file.js';
