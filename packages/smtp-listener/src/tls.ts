/**
 * tls: the STARTTLS certificate. The configured tls.cert/tls.key when given; otherwise a self-signed
 * certificate for the host name, generated once under <dataDir>/tls and reused across restarts
 * (written with the durable-write rule, key mode 0600), so opportunistic TLS works out of the box.
 * Configured files that are missing, unreadable, given alone or not a matching pair are a ConfigError
 * naming the key and the file (the service exits 78 and is not restarted in a loop).
 */
import fs from 'node:fs';
import path from 'node:path';
import tls from 'node:tls';
import { ConfigError } from '@moat/config';
import selfsigned from 'selfsigned';

export interface TlsFiles {
  key: Buffer;
  cert: Buffer;
  generated: boolean;
}

export async function ensureTlsCertificate(opts: {
  cert: string;
  key: string;
  dataDir: string;
  hostname: string;
}): Promise<TlsFiles> {
  if (opts.cert || opts.key) return configuredFiles(opts.cert, opts.key);
  const dir = path.join(opts.dataDir, 'tls');
  const certFile = path.join(dir, 'selfsigned.crt');
  const keyFile = path.join(dir, 'selfsigned.key');
  if (fs.existsSync(certFile) && fs.existsSync(keyFile)) {
    return { cert: fs.readFileSync(certFile), key: fs.readFileSync(keyFile), generated: false };
  }
  fs.mkdirSync(dir, { recursive: true });
  const notAfter = new Date();
  notAfter.setFullYear(notAfter.getFullYear() + 10);
  const pems = await selfsigned.generate([{ name: 'commonName', value: opts.hostname }], {
    keyType: 'ec',
    curve: 'P-256',
    algorithm: 'sha256',
    notAfterDate: notAfter,
    extensions: [{ name: 'subjectAltName', altNames: [{ type: 2, value: opts.hostname }] }],
  });
  // another replica may be generating at the same moment: write to unique names, rename into place
  const suffix = `.${process.pid}.tmp`;
  fs.writeFileSync(keyFile + suffix, pems.private, { mode: 0o600 });
  fs.writeFileSync(certFile + suffix, pems.cert);
  fs.renameSync(keyFile + suffix, keyFile);
  fs.renameSync(certFile + suffix, certFile);
  return { cert: fs.readFileSync(certFile), key: fs.readFileSync(keyFile), generated: true };
}

/** The operator's tls.cert and tls.key, read and checked as a pair. */
function configuredFiles(certFile: string, keyFile: string): TlsFiles {
  const refuse = (problem: string) => new ConfigError([problem], 'tls');
  if (!certFile) throw refuse(`tls.cert: must be given together with tls.key (${keyFile})`);
  if (!keyFile) throw refuse(`tls.key: must be given together with tls.cert (${certFile})`);
  const read = (key: string, file: string) => {
    try {
      return fs.readFileSync(file);
    } catch (err) {
      throw refuse(`${key}: cannot read ${file}: ${(err as Error).message}`);
    }
  };
  const cert = read('tls.cert', certFile);
  const key = read('tls.key', keyFile);
  try {
    tls.createSecureContext({ cert, key });
  } catch (err) {
    throw refuse(
      `tls.cert, tls.key: ${certFile} and ${keyFile} are not a usable pair: ${(err as Error).message}`,
    );
  }
  return { cert, key, generated: false };
}
