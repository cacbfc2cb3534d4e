/**
 * @moat/spool: durable files (write, fsync, rename, fsync the directory, group-committed), the worker
 * thread that does the same for whole messages without a thread-pool hop per call (DurableWriter),
 * and the bounded message spool a hop keeps while it scans or forwards a message.
 */
export {
  removeDurable,
  removeLazily,
  removeOrphans,
  renameDurable,
  syncDir,
  TMP_NAME,
  tmpName,
  writeDurable,
  type DurableWrite,
  type DurableWriteOptions,
  type DurableWriteResult,
  type FinalName,
  type Part,
} from './durable.js';
export { DurableWriter, type DurableWriterOptions } from './durable-writer.js';
export { MessageSpool, SPOOL_NAME } from './message-spool.js';
export {
  encodeHead,
  messageStream,
  readEnvelopeHead,
  writeEnvelopeFile,
  type EnvelopeFileHead,
} from './envelope-file.js';
