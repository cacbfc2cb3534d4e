/**
 * moat (npm start): the whole chain on one machine. Validates the configuration once (a mistake stops
 * here with every bad key named), then runs the five services under the supervisor until Ctrl-C or
 * SIGTERM. Services start from the back of the chain, so each next hop is up before its client.
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ConfigError, loadConfig, printConfig } from '@moat/config';
import { Supervisor } from './supervisor.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const SERVICES = ['delivery', 'quarantine', 'filter', 'greylist', 'screen'];

let loaded;
try {
  loaded = loadConfig();
} catch (err) {
  if (err instanceof ConfigError) {
    process.stderr.write(`moat: ${err.message}\n`);
    process.exit(78);
  }
  throw err;
}
if (process.argv.includes('--print-config')) {
  process.stdout.write(printConfig(loaded.config));
  process.exit(0);
}
const c = loaded.config;
process.stdout.write(
  `moat: ${loaded.fileExists ? loaded.file : 'built-in defaults (no moat.yaml)'}; ` +
    `mail for ${c.domains.join(', ')} on ${c.screen.listen} -> Maildir ${c.delivery.maildir}\n`,
);

// children resolve relative paths against the repository root, as this process does
const env = { ...process.env, MOAT_CONFIG: loaded.file, MOAT_DATA_DIR: c.dataDir };
const supervisor = new Supervisor({ root, services: SERVICES, env });
supervisor.start();

let stopping = false;
const stop = (signal: string) => {
  if (stopping) process.exit(1);
  stopping = true;
  process.stdout.write(`moat: ${signal}: stopping the services\n`);
  void supervisor.stop().then(() => process.exit(0));
};
process.on('SIGINT', () => stop('SIGINT'));
process.on('SIGTERM', () => stop('SIGTERM'));
