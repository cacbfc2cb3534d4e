/**
 * queue: delivery's durable queue, owned by this replica (Postfix's incoming/active/deferred, small).
 *
 * The common case, one local recipient, takes no queue at all: the message goes straight into the
 * Maildir before the 250 (tmp/, fsync, rename into new/, fsync new/), as an LMTP final delivery
 * does. The Maildir copy is the durable copy; there is nothing left to do after the answer.
 * Everything else is queued:
 *
 *   active/<id>    written durably before the 250 (envelope line + message), delivered at once;
 *   active/<id>.md one local recipient in Maildir form (Return-Path and Delivered-To on top), as
 *                  releases before direct delivery queued it: no longer written, still recovered
 *                  (hard-linked into the Maildir) when found after an upgrade;
 *   deferred/<id>  what could not be delivered yet: local recipients whose mailbox failed (tried again
 *                  every queueRunDelay, the file keeping only those still undelivered) and recipients
 *                  in other domains (relaying comes with the delivery issue).
 *
 * A message leaves active/ only after every local copy is durable in its Maildir. At start-up whatever
 * is left in active/ (a crash between the 250 and the Maildir) is delivered again: at least once. Each
 * recipient's copy is noted in active/.<id>.done once durable, and a recovery skips those: a crash
 * mid-way does not give every recipient a second copy (a system crash may lose the unsynced note).
 * A delivery that fails altogether (a local copy failed and deferred/ cannot be written either: the disk
 * is full) leaves the file in active/ and is tried again at each queue run, not only at a restart.
 * Durable writes go through `write` (delivery passes its DurableWriter's; default writeDurable).
 */
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import type { Logger } from '@moat/log';
import {
  messageStream,
  readEnvelopeHead,
  removeLazily,
  removeOrphans,
  writeDurable,
  writeEnvelopeFile,
  type DurableWrite,
  type EnvelopeFileHead,
} from '@moat/spool';
import type { ClientInfo } from '@moat/smtp-listener';
import { deliverToMaildir, linkIntoMaildir } from './maildir.js';

const MAILDIR_FORM = '.md';
const RELAY_OFF = 'relaying to other domains is not enabled';

/** active/.<id>.done: the recipients of active/<id> that have their copy, one a line. */
const doneName = (id: string) => `.${id}.done`;

export interface QueueHead extends EnvelopeFileHead {
  from: string;
  rcpt: string[];
  client: ClientInfo;
  arrived: number;
  /** Set on deferred files. */
  reason?: string;
  attempts?: number;
}

export interface QueueOptions {
  dir: string;
  maildir: string;
  domains: readonly string[];
  hostname: string;
  runDelayMs: number;
  logger: Logger;
  /** Messages up to this size are kept in memory between the queue write and the Maildir. */
  memoryCopy?: number;
  /** Deliveries in parallel. */
  concurrency?: number;
  /** How durable files are written (default writeDurable). */
  write?: DurableWrite;
}

/** What accept() did before the 250: a final delivery into the Maildir, or a queue file. */
export type Accepted =
  | { kind: 'delivered'; bytes: number; to: string; file: string }
  | { kind: 'queued'; bytes: number; name: string; copy: Buffer | undefined };

function domainOf(address: string): string {
  const at = address.lastIndexOf('@');
  return at < 0
    ? ''
    : address
        .slice(at + 1)
        .toLowerCase()
        .replace(/\.$/, '');
}

export class Queue {
  readonly active: string;
  readonly deferred: string;
  #running = 0;
  #waiting: (() => void)[] = [];
  #timer: NodeJS.Timeout | undefined;
  #inflight = new Set<Promise<void>>();
  #queueRun: Promise<void> | undefined;
  #stopped = false;
  /**
   * Messages of active/ whose delivery failed (the Maildir and deferred/ both unwritable: a full disk),
   * with the recipients that got their copy before it did: tried again at the next queue run.
   */
  readonly #stranded = new Map<string, Set<string>>();
  /** Files of deferred/ with the recipients a retry reached, until the file is rewritten or gone. */
  readonly #retried = new Map<string, Set<string>>();
  readonly #local: Set<string>;

  constructor(readonly o: QueueOptions) {
    this.active = path.join(o.dir, 'active');
    this.deferred = path.join(o.dir, 'deferred');
    this.#local = new Set(o.domains.map((d) => d.toLowerCase()));
  }

  async init(): Promise<void> {
    await fsp.mkdir(this.active, { recursive: true });
    await fsp.mkdir(this.deferred, { recursive: true });
    const names = await fsp.readdir(this.active);
    const leftovers = names.filter((n) => !n.startsWith('.'));
    const kept = new Set(leftovers.map(doneName));
    for (const name of names) {
      // half-written temp files, and the done lists of messages that are gone
      if (name.startsWith('.') && !kept.has(name))
        await fsp.rm(path.join(this.active, name), { force: true });
    }
    await removeOrphans(this.deferred);
    // the done lists of deferred files that are gone (a crash between the file and its list)
    const deferred = await fsp.readdir(this.deferred);
    const present = new Set(deferred.filter((n) => !n.startsWith('.')).map(doneName));
    for (const name of deferred)
      if (name.startsWith('.') && name.endsWith('.done') && !present.has(name))
        await fsp.rm(path.join(this.deferred, name), { force: true });
    if (leftovers.length)
      this.o.logger.info({ count: leftovers.length }, 'recovering messages left in the active queue');
    for (const id of leftovers) this.schedule(id);
    this.#timer = setInterval(() => void this.#runDeferred(), this.o.runDelayMs);
    this.#timer.unref();
  }

  isLocal(address: string): boolean {
    return address.toLowerCase() === 'postmaster' || this.#local.has(domainOf(address));
  }

  /**
   * Makes the message durable; resolves only when it is safe on disk. One local recipient: delivered
   * into the Maildir, done. Otherwise written into active/, and up to `memoryCopy` bytes of it kept in
   * memory too, so the Maildir copies are written without reading the queue file back.
   */
  async accept(head: QueueHead, message: readonly (Buffer | AsyncIterable<Buffer>)[]): Promise<Accepted> {
    if (head.rcpt.length === 1 && this.isLocal(head.rcpt[0]!)) {
      const to = this.#recipient(head.rcpt[0]!);
      const { file, bytes } = await this.#toMaildir(to, head.from, message);
      return { kind: 'delivered', bytes, to, file };
    }
    const limit = this.o.memoryCopy ?? 1024 * 1024;
    const kept: Buffer[] = [];
    let keptBytes = 0;
    async function* tee(parts: readonly (Buffer | AsyncIterable<Buffer>)[]): AsyncGenerator<Buffer> {
      for (const part of parts) {
        for await (const chunk of Buffer.isBuffer(part) ? [part] : part) {
          if (keptBytes <= limit) {
            kept.push(chunk);
            keptBytes += chunk.length;
          }
          yield chunk;
        }
      }
    }
    const { bytes } = await writeEnvelopeFile(this.active, head, [tee(message)], this.#write);
    const copy = keptBytes <= limit ? Buffer.concat(kept, keptBytes) : undefined;
    return { kind: 'queued', bytes, name: head.id, copy };
  }

  /** After the 250: logs a final delivery, or delivers a queued message in the background. */
  settle(head: QueueHead, accepted: Accepted): void {
    if (accepted.kind === 'delivered') this.#logDelivered(head.id, accepted.to, head.arrived, accepted.file);
    else this.schedule(accepted.name, { head, copy: accepted.copy });
  }

  get #write(): DurableWrite {
    return this.o.write ?? writeDurable;
  }

  #toMaildir(recipient: string, sender: string, message: readonly (Buffer | AsyncIterable<Buffer>)[]) {
    return deliverToMaildir({
      root: this.o.maildir,
      hostname: this.o.hostname,
      recipient,
      sender,
      message,
      write: this.#write,
    });
  }

  #logDelivered(id: string, to: string, arrived: number | undefined, file: string): void {
    this.o.logger.info(
      {
        id,
        to,
        relay: 'maildir',
        delay: arrived === undefined ? undefined : (Date.now() - arrived) / 1000,
        file,
        status: 'sent',
      },
      'delivered',
    );
  }

  #recipient(rcpt: string): string {
    return rcpt.includes('@') ? rcpt : `${rcpt}@${this.o.domains[0] ?? this.o.hostname}`;
  }

  /** Delivers a queued message in the background (from `copy` when given). */
  schedule(id: string, queued?: { head: QueueHead; copy: Buffer | undefined }): void {
    const reached = this.#stranded.get(id) ?? new Set<string>();
    this.#stranded.delete(id);
    const p = this.#withSlot(() => this.#deliver(id, queued, reached)).catch((err: unknown) => {
      // the file stays in active/; tried again at each queue run (a disk that was full has room again)
      this.#stranded.set(id, reached);
      this.o.logger.error(
        { id, err },
        'delivery failed; message stays in the active queue, tried again at the next queue run',
      );
    });
    this.#inflight.add(p);
    void p.finally(() => this.#inflight.delete(p));
  }

  async #withSlot<T>(fn: () => Promise<T>): Promise<T> {
    const max = this.o.concurrency ?? 32;
    if (this.#running >= max) await new Promise<void>((r) => this.#waiting.push(r));
    this.#running++;
    try {
      return await fn();
    } finally {
      this.#running--;
      this.#waiting.shift()?.();
    }
  }

  async #deliver(
    id: string,
    queued?: { head: QueueHead; copy: Buffer | undefined },
    reached: Set<string> = new Set(),
  ): Promise<void> {
    const file = path.join(this.active, id);
    if (id.endsWith(MAILDIR_FORM)) return this.#deliverLinked(id.slice(0, -MAILDIR_FORM.length), file);
    let head: QueueHead;
    let message: Buffer | (() => Readable);
    if (queued?.copy) {
      head = queued.head;
      message = queued.copy;
    } else {
      const read = await readEnvelopeHead<QueueHead>(file);
      head = read.head;
      message = () => messageStream(file, read.bodyOffset);
    }
    const remote = head.rcpt.filter((r) => !this.isLocal(r));
    const doneFile = path.join(this.active, doneName(id));
    // a message just accepted has no done list yet
    const { done, note } = await this.#ledger(id, doneFile, reached, !queued);
    const failed = await this.#deliverLocal(
      id,
      head,
      head.rcpt.filter((r) => this.isLocal(r) && !done.has(r)),
      () => (Buffer.isBuffer(message) ? message : message()),
      note,
    );
    if (remote.length || failed.length) {
      const deferredHead: QueueHead = {
        ...head,
        rcpt: [...failed, ...remote],
        reason: failed.length ? 'local delivery failed' : RELAY_OFF,
        attempts: 1,
      };
      await writeEnvelopeFile(
        this.deferred,
        deferredHead,
        [Buffer.isBuffer(message) ? message : message()],
        this.#write,
      );
      for (const to of remote)
        this.o.logger.warn({ id, to, status: 'deferred', reason: RELAY_OFF }, 'deferred');
    }
    // every copy is durable in its Maildir (or in deferred/): the queue file may go without an fsync
    await removeLazily(file);
    await fsp.rm(doneFile, { force: true });
  }

  /**
   * Which recipients of a queue file already have their copy: those in its done list (noted before a
   * crash) and those an earlier attempt of this process reached (`reached`: their note may not have been
   * written, the disk full); and `note`, which records one more in both. Notes are not fsynced: they
   * hold across a process crash, and after a system crash a duplicate is the cost.
   */
  async #ledger(
    id: string,
    doneFile: string,
    reached: Set<string>,
    readNotes: boolean,
  ): Promise<{ done: Set<string>; note: (rcpt: string) => Promise<unknown> }> {
    const notes = readNotes ? (await fsp.readFile(doneFile, 'utf8').catch(() => '')).split('\n') : [];
    const done = new Set([...reached, ...notes.filter(Boolean)]);
    if (done.size)
      this.o.logger.info({ id, done: [...done] }, 'recovering: these recipients already have their copy');
    const note = (rcpt: string) => {
      reached.add(rcpt);
      return fsp.appendFile(doneFile, `${rcpt}\n`).catch(() => undefined);
    };
    return { done, note };
  }

  /**
   * Delivers one copy per local recipient, each on its own: one mailbox that fails (its folder
   * unusable, the disk full) does not hold up the others. Returns the recipients that failed, each
   * logged as deferred with its error, for deferred/ and a later retry.
   */
  async #deliverLocal(
    id: string,
    head: QueueHead,
    rcpts: readonly string[],
    message: () => Buffer | Readable,
    delivered?: (rcpt: string) => Promise<unknown>,
  ): Promise<string[]> {
    const failed: string[] = [];
    for (const rcpt of rcpts) {
      const recipient = this.#recipient(rcpt);
      try {
        const done = await this.#toMaildir(recipient, head.from, [message()]);
        this.#logDelivered(id, recipient, head.arrived, done.file);
        await delivered?.(rcpt);
      } catch (err) {
        failed.push(rcpt);
        this.o.logger.warn(
          {
            id,
            to: recipient,
            status: 'deferred',
            reason: `local delivery failed: ${(err as Error).message}`,
          },
          'deferred',
        );
      }
    }
    return failed;
  }

  /** A Maildir-form queue file (see the top): link it in, then let the queue file go. */
  async #deliverLinked(id: string, file: string): Promise<void> {
    // the envelope is the Delivered-To header on top of the file
    const top = (await fsp.readFile(file)).subarray(0, 4096).toString('utf8');
    const recipient = /^Delivered-To: (.*)\r$/m.exec(top)?.[1];
    if (!recipient) throw new Error(`${file}: no Delivered-To on top of a Maildir-form queue file`);
    const { size } = await fsp.stat(file);
    const done = await linkIntoMaildir({
      root: this.o.maildir,
      hostname: this.o.hostname,
      recipient,
      file,
      size,
    });
    this.#logDelivered(id, recipient, undefined, done.file);
    await removeLazily(file);
  }

  /**
   * The deferred queue run, every runDelayMs: local recipients are tried again (their mailbox may work
   * now); a file keeps only the recipients still undelivered, and goes once none is left. Recipients in
   * other domains wait for a relay transport.
   */
  #runDeferred(): Promise<void> {
    this.#queueRun ??= this.#retryDeferred().finally(() => (this.#queueRun = undefined));
    return this.#queueRun;
  }

  async #retryDeferred(): Promise<void> {
    for (const id of [...this.#stranded.keys()]) if (!this.#stopped) this.schedule(id);
    const names = (await fsp.readdir(this.deferred).catch(() => [] as string[])).filter(
      (n) => !n.startsWith('.'),
    );
    let waiting = 0;
    for (const name of names) {
      if (this.#stopped) return;
      try {
        if (!(await this.#retryOne(name))) waiting++;
      } catch (err) {
        this.o.logger.error({ id: name, err }, 'deferred queue: could not retry this message');
      }
    }
    if (waiting)
      this.o.logger.info(
        { count: waiting },
        'deferred queue: nothing can deliver these yet (no relay transport)',
      );
  }

  /**
   * Tries a deferred file's local recipients again; false when it has none to try. As in active/, each
   * copy is noted in deferred/.<name>.done once durable, so a crash in the middle of a retry does not
   * give the recipients already reached a second copy at the next one.
   */
  async #retryOne(name: string): Promise<boolean> {
    const file = path.join(this.deferred, name);
    const { head, bodyOffset } = await readEnvelopeHead<QueueHead>(file);
    const local = head.rcpt.filter((r) => this.isLocal(r));
    if (!local.length) return false;
    const doneFile = path.join(this.deferred, doneName(name));
    // kept until the file is rewritten or gone, as #stranded is for active/
    const reached = this.#retried.get(name) ?? new Set<string>();
    this.#retried.set(name, reached);
    const { done, note } = await this.#ledger(head.id, doneFile, reached, true);
    const failed = await this.#deliverLocal(
      head.id,
      head,
      local.filter((r) => !done.has(r)),
      () => messageStream(file, bodyOffset),
      note,
    );
    const left = [...failed, ...head.rcpt.filter((r) => !this.isLocal(r))];
    if (!left.length) {
      // every copy is durable in its Maildir
      await removeLazily(file);
    } else if (left.length < head.rcpt.length) {
      // renamed over the old file: a crash leaves one or the other, never a recipient without a copy
      const next: QueueHead = {
        ...head,
        rcpt: left,
        reason: failed.length ? 'local delivery failed' : RELAY_OFF,
        attempts: (head.attempts ?? 1) + 1,
      };
      await writeEnvelopeFile(this.deferred, next, [messageStream(file, bodyOffset)], this.#write, {
        replace: true,
      });
    }
    // the file no longer names the recipients noted
    this.#retried.delete(name);
    await fsp.rm(doneFile, { force: true }).catch(() => undefined);
    return true;
  }

  /** Waits for deliveries in progress (on stop). */
  async drain(): Promise<void> {
    this.#stopped = true;
    clearInterval(this.#timer);
    await Promise.allSettled([...this.#inflight, this.#queueRun]);
  }
}
