/**
 * @moat/testkit: what Moat's tests share: free ports and temporary folders, the services as real
 * processes (Chain), a raw SMTP client with exact replies, swaks / smtp-source / smtp-sink wrappers,
 * a scripted next hop for failure paths, Maildir readers, and a private Postfix instance.
 */
export { freePort, repoRoot, tmpDir, waitFor, waitForPort } from './net.js';
export {
  Chain,
  SERVICES,
  ServiceProcess,
  type ChainOptions,
  type LogLine,
  type Ports,
  type ServiceName,
} from './chain.js';
export { message, SmtpClient, type TestReply } from './smtp-client.js';
export { smtpSink, smtpSource, stopChild, swaks, which, type SwaksResult } from './tools.js';
export { filesUnder, headerValues, maildirMessages } from './maildir.js';
export { ScriptedServer, type Script, type Stage } from './scripted-server.js';
export { zip } from './zip.js';
export { postfixUnavailable, startPostfix, type PostfixInstance, type PostfixOptions } from './postfix.js';
