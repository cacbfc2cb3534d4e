/**
 * spamassassin-client: a typed client of SpamAssassin's spamd over SPAMC/1.5 (CHECK, SYMBOLS,
 * REPORT, REPORT_IFSPAM, HEADERS, PROCESS, PING, TELL), over TCP or a unix socket, with streamed
 * bodies, a connect and a whole-request timeout, size limits, and one typed error (SpamdError).
 * Exports the client, its option and result types, the protocol pieces (request builder, response
 * parser) for those who need the bytes, and spamd's code table.
 */
export {
  SpamdClient,
  type CheckResult,
  type HeadersResult,
  type PingResult,
  type ProcessResult,
  type ReportResult,
  type RequestOptions,
  type SpamdClientOptions,
  type SpamdResult,
  type SymbolsResult,
  type TellOptions,
  type TellResult,
} from './client.js';
export { EX_CODES, exitCodeName, SpamdError, type SpamdErrorKind, type SpamdPhase } from './errors.js';
export { formatSpamdAddress, parseSpamdAddress, SPAMD_DEFAULT_PORT, type SpamdAddress } from './address.js';
export { type SizePolicy, type SpamdMessage, type SpamdMessageStream } from './body.js';
export {
  buildRequestHead,
  parseSpamHeader,
  parseSymbols,
  parseTellTargets,
  ResponseParser,
  SPAMC_VERSION,
  SPAMD_COMMANDS,
  type RequestHead,
  type ResponseParserOptions,
  type SpamdCommand,
  type SpamdResponse,
  type SpamVerdict,
  type TellTarget,
} from './protocol.js';
