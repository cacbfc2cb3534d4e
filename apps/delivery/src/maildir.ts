/**
 * maildir: local delivery into <root>/<domain>/<localpart>/{tmp,new,cur}, with Maildir's rule: write
 * under tmp/, fsync, rename into new/, fsync new/ (group-committed). Adds Return-Path and
 * Delivered-To on top, as Postfix's local and virtual agents do.
 */
import crypto from 'node:crypto';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { syncDir, writeDurable, type DurableWrite, type Part } from '@moat/spool';

/**
 * One character of a local part as it goes into a folder name: `%xx` below U+0100 (as before), `%uxxxx`
 * for every UTF-16 unit above. Fixed widths keep the encoding one-to-one: with a variable width, U+0E91
 * (`%e91`) and "é1" (`%e9` + `1`) were the same folder, so two recipients shared one Maildir.
 */
function escapeChar(c: string): string {
  const code = c.charCodeAt(0);
  return code < 0x100 ? `%${code.toString(16).padStart(2, '0')}` : `%u${code.toString(16).padStart(4, '0')}`;
}

/**
 * Splits a recipient into its mailbox folder parts; the local part is lower-cased, without its +extension,
 * and made path-safe.
 */
export function mailboxPath(root: string, address: string): { domain: string; local: string; dir: string } {
  const at = address.lastIndexOf('@');
  const rawLocal = at < 0 ? address : address.slice(0, at);
  const domain = (at < 0 ? '' : address.slice(at + 1)).toLowerCase().replace(/\.$/, '');
  const unquoted = rawLocal.toLowerCase().replace(/^"(.*)"$/, '$1');
  // user+extension is user's mailbox (recipient_delimiter '+', as greylist's recipient table and
  // filter's policy read it); Delivered-To keeps the whole address for the user's own rules
  const plus = unquoted.indexOf('+');
  const local = (plus > 0 ? unquoted.slice(0, plus) : unquoted).replace(
    /[^a-z0-9!#$&'*+=?^_`{|}~.-]|^\./g,
    escapeChar,
  );
  const safeDomain = domain.replace(/[^a-z0-9.-]|^\./g, '_');
  return { domain: safeDomain, local: local || '%00', dir: path.join(root, safeDomain, local || '%00') };
}

const created = new Set<string>();

async function ensureMaildir(dir: string): Promise<void> {
  if (created.has(dir)) return;
  await Promise.all(
    ['tmp', 'new', 'cur'].map((d) => fsp.mkdir(path.join(dir, d), { recursive: true, mode: 0o700 })),
  );
  created.add(dir);
}

let seq = 0;

/** A unique name under tmp/; the file is called `<it>,S=<size>` in new/. */
function uniqueName(hostname: string): string {
  const now = Date.now();
  const usec = String(now % 1000).padStart(3, '0') + crypto.randomInt(0, 1000).toString().padStart(3, '0');
  return `${Math.floor(now / 1000)}.M${usec}P${process.pid}Q${++seq}.${hostname.replace(/[/:]/g, '_')}`;
}

export interface MaildirDelivery {
  file: string;
  bytes: number;
}

/**
 * Delivers one copy: Return-Path and Delivered-To on top of `message`, under tmp/, fsync, rename into
 * new/, fsync new/. Resolves once the copy is durable; `write` is writeDurable or a DurableWriter's.
 */
export async function deliverToMaildir(opts: {
  root: string;
  hostname: string;
  recipient: string;
  sender: string;
  message: readonly Part[];
  write?: DurableWrite;
}): Promise<MaildirDelivery> {
  const { dir } = mailboxPath(opts.root, opts.recipient);
  await ensureMaildir(dir);
  const head = Buffer.from(`Return-Path: <${opts.sender}>\r\nDelivered-To: ${opts.recipient}\r\n`, 'utf8');
  const base = uniqueName(opts.hostname);
  const write = opts.write ?? writeDurable;
  const { path: file, bytes } = await forgetOnFailure(dir, () =>
    write(path.join(dir, 'new'), (size) => `${base},S=${size}`, [head, ...opts.message], {
      tmpDir: path.join(dir, 'tmp'),
      tmpName: base,
    }),
  );
  return { file, bytes };
}

/**
 * A failed write may mean the folders are gone (a mailbox removed by hand): the next delivery makes
 * them again, as Postfix's virtual does, instead of failing until a restart.
 */
async function forgetOnFailure<T>(dir: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    created.delete(dir);
    throw err;
  }
}

/**
 * Files an already durable file (a queue file written in Maildir form: Return-Path and Delivered-To on
 * top, as releases before direct delivery wrote them; found in active/ after an upgrade) into the
 * Maildir by a hard link: no second copy of the bytes and no second data fsync, only the
 * fsync of new/. Falls back to a copy when the queue and the Maildir are on different file systems.
 */
export async function linkIntoMaildir(opts: {
  root: string;
  hostname: string;
  recipient: string;
  file: string;
  size: number;
}): Promise<MaildirDelivery> {
  const { dir } = mailboxPath(opts.root, opts.recipient);
  await ensureMaildir(dir);
  const name = `${uniqueName(opts.hostname)},S=${opts.size}`;
  const final = path.join(dir, 'new', name);
  try {
    await forgetOnFailure(dir, () => fsp.link(opts.file, final));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EXDEV') throw err;
    const { path: copied } = await writeDurable(
      path.join(dir, 'new'),
      name,
      [await fsp.readFile(opts.file)],
      {
        tmpDir: path.join(dir, 'tmp'),
      },
    );
    return { file: copied, bytes: opts.size };
  }
  await syncDir(path.join(dir, 'new'));
  return { file: final, bytes: opts.size };
}
