/**
 * @moat/service: the main() every Moat service shares.
 *
 *   runService('greylist', (config, logger) => startGreylist(config, logger));
 *
 * --print-config prints the effective configuration (secrets masked) and exits 0. An invalid
 * configuration prints every bad key and exits 78 (EX_CONFIG) before anything listens. SIGTERM/SIGINT
 * stop the service gracefully (listeners closed, open sessions given their grace period) and exit 0;
 * a second signal exits at once. Under the launcher (an IPC channel to it), the service sends
 * READY_MESSAGE over the channel once it has started (its listeners bound), and the channel closing
 * (the launcher killed) stops the service the same way. An uncaught error is logged and exits 70 so the launcher or the
 * container runtime restarts a clean process.
 */
import { ConfigError, loadConfig, type MoatConfig, printConfig } from '@moat/config';
import { createLogger, flushLogger, type Logger } from '@moat/log';
import { READY_MESSAGE } from '@moat/runtime';

export interface RunningService {
  stop(): Promise<void>;
}

export type StartFn = (config: Readonly<MoatConfig>, logger: Logger) => Promise<RunningService>;

export function runService(name: string, start: StartFn, argv = process.argv.slice(2)): void {
  let loaded;
  try {
    loaded = loadConfig();
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`moat-${name}: ${err.message}\n`);
      process.exit(78);
    }
    throw err;
  }
  if (argv.includes('--print-config')) {
    process.stdout.write(printConfig(loaded.config));
    process.exit(0);
  }
  const logger = createLogger(name, loaded.config.log.level);
  process.on('uncaughtException', (err) => {
    logger.fatal({ err }, 'uncaught exception');
    flushLogger();
    process.exit(70);
  });
  process.on('unhandledRejection', (err) => {
    logger.fatal({ err }, 'unhandled rejection');
    flushLogger();
    process.exit(70);
  });
  const supervised = process.channel !== undefined;
  start(loaded.config, logger).then(
    (service) => {
      let stopping = false;
      const stop = (signal: string) => {
        if (stopping) {
          logger.warn({ signal }, 'second signal, exiting now');
          flushLogger();
          process.exit(1);
        }
        stopping = true;
        logger.info({ signal }, 'stopping');
        service.stop().then(
          () => {
            logger.info('stopped');
            flushLogger();
            process.exit(0);
          },
          (err: unknown) => {
            logger.error({ err }, 'stop failed');
            flushLogger();
            process.exit(1);
          },
        );
      };
      process.on('SIGTERM', () => stop('SIGTERM'));
      process.on('SIGINT', () => stop('SIGINT'));
      // started by the launcher (npm start), which holds an IPC channel to each service: the channel
      // closing means the launcher is gone (killed with -9, crashed), and a service left behind would
      // go on taking mail with nobody to stop it. Alone or in a container there is no channel.
      if (supervised) {
        if (process.connected) {
          process.once('disconnect', () => stop('launcher gone'));
          // the launcher starts the next service of the chain now; a channel that closes meanwhile
          // is the disconnect above (the callback keeps its error from being thrown)
          process.send?.(READY_MESSAGE, undefined, undefined, () => {});
        } else stop('launcher gone');
      }
    },
    (err: unknown) => {
      logger.fatal({ err }, 'start failed');
      flushLogger();
      // a setting only the service itself can judge: the same exit as a schema error, so the
      // launcher does not restart it in a loop
      if (err instanceof ConfigError) {
        process.stderr.write(`moat-${name}: ${err.message}\n`);
        process.exit(78);
      }
      const e = err as NodeJS.ErrnoException & { address?: string; port?: number };
      if (e.code === 'EADDRINUSE') {
        // another Moat, or another program, listens there: say so plainly (the launcher restarts us)
        process.stderr.write(`${name}: ${e.address ?? ''}:${e.port ?? ''} is already in use\n`);
      }
      process.exit(1);
    },
  );
}
