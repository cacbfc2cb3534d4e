/**
 * @moat/log: one pino logger per process. JSON lines on stdout with the service name and postscreen-
 * style message words; fields broken out for machines. Never pass message bodies or secrets.
 *
 * Writes are buffered (sonic-boom, async) so logging does not cost a syscall per line on the mail
 * path; flushLogger() is called on stop so the last lines are not lost.
 */
import pino, { type Logger } from 'pino';

export type { Logger } from 'pino';

export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';

let destination: ReturnType<typeof pino.destination> | undefined;

export function createLogger(service: string, level: LogLevel = 'info'): Logger {
  destination ??= pino.destination({ dest: 1, sync: false });
  return pino(
    {
      level,
      base: { service },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    destination,
  );
}

/** Flushes buffered lines; call before the process exits. */
export function flushLogger(): void {
  try {
    destination?.flushSync();
  } catch {
    // nothing left to write to
  }
}

/** A logger that drops everything, for unit tests. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
