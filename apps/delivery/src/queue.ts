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
 *   deferred/<id>  what could not be delivered yet (for now: recipients in other domains, since relaying
 *                  comes with the delivery issue), retried every queueRunDelay.
 *
 * A message leaves active/ only after every local copy is durable in its Maildir. At start-up whatever
 * is left in active/ (a crash between the 250 and the Maildir) is delivered again: at least once.
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
  writeDurable,
  writeEnvelopeFile,
  type DurableWrite,
  type EnvelopeFileHead,
} from '@moat/spool';
import type { ClientInfo } from '@moat/smtp-listener';
import { deliverToMaildir, linkIntoMaildir } from './maildir.js';

const MAILDIR_FORM = '.md';

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
  readonly #local: Set<string>;

  constructor(readonly o: QueueOptions) {
    this.active = path.join(o.dir, 'active');
    this.deferred = path.join(o.dir, 'deferred');
    this.#local = new Set(o.domains.map((d) => d.toLowerCase()));
  }

  async init(): Promise<void> {
    await fsp.mkdir(this.active, { recursive: true });
    await fsp.mkdir(this.deferred, { recursive: true });
    const leftovers = (await fsp.readdir(this.active)).filter((n) => !n.startsWith('.'));
    for (const name of await fsp.readdir(this.active)) {
      if (name.startsWith('.')) await fsp.rm(path.join(this.active, name), { force: true }); // half-written temp files
    }
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
    const p = this.#withSlot(() => this.#deliver(id, queued)).catch((err: unknown) =>
      this.o.logger.error({ id, err }, 'delivery failed; message stays in the active queue until restart'),
    );
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

  async #deliver(id: string, queued?: { head: QueueHead; copy: Buffer | undefined }): Promise<void> {
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
    const remote: string[] = [];
    for (const rcpt of head.rcpt) {
      if (!this.isLocal(rcpt)) {
        remote.push(rcpt);
        continue;
      }
      const recipient = this.#recipient(rcpt);
      const done = await this.#toMaildir(recipient, head.from, [
        Buffer.isBuffer(message) ? message : message(),
      ]);
      this.#logDelivered(id, recipient, head.arrived, done.file);
    }
    if (remote.length) {
      const deferredHead: QueueHead = {
        ...head,
        rcpt: remote,
        reason: 'relaying to other domains is not enabled',
        attempts: 1,
      };
      await writeEnvelopeFile(
        this.deferred,
        deferredHead,
        [Buffer.isBuffer(message) ? message : message()],
        this.#write,
      );
      for (const to of remote) {
        this.o.logger.warn({ id, to, status: 'deferred', reason: deferredHead.reason }, 'deferred');
      }
    }
    // every copy is durable in its Maildir (or in deferred/): the queue file may go without an fsync
    await removeLazily(file);
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

  async #runDeferred(): Promise<void> {
    const names = (await fsp.readdir(this.deferred).catch(() => [] as string[])).filter(
      (n) => !n.startsWith('.'),
    );
    if (names.length)
      this.o.logger.info(
        { count: names.length },
        'deferred queue: nothing can deliver these yet (no relay transport)',
      );
  }

  /** Waits for deliveries in progress (on stop). */
  async drain(): Promise<void> {
    clearInterval(this.#timer);
    await Promise.allSettled([...this.#inflight]);
  }
}
