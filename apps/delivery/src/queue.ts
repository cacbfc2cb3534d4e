/**
 * queue: delivery's durable queue, owned by this replica (Postfix's incoming/active/deferred, small).
 *
 *   active/<id>    written durably before the 250 (envelope line + message), delivered at once;
 *   active/<id>.md the common case, one local recipient: written durably in Maildir form (Return-Path
 *                  and Delivered-To on top, which are the whole envelope), then hard-linked into the
 *                  Maildir: the bytes are written and fsynced once, not twice;
 *   deferred/<id>  what could not be delivered yet (for now: recipients in other domains, since relaying
 *                  comes with the delivery issue), retried every queueRunDelay.
 *
 * A message leaves active/ only after every local copy is durable in its Maildir. At start-up whatever
 * is left in active/ (a crash between the 250 and the Maildir) is delivered again: at least once.
 */
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from '@moat/log';
import {
  messageStream,
  readEnvelopeHead,
  removeLazily,
  writeDurable,
  writeEnvelopeFile,
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
}

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
   * Writes the message durably into active/; resolves only when it is safe on disk. Up to
   * `memoryCopy` bytes of it are kept in memory too, so the Maildir copy is written without reading
   * the queue file back.
   */
  async enqueue(
    head: QueueHead,
    message: readonly (Buffer | AsyncIterable<Buffer>)[],
  ): Promise<{ bytes: number; copy: Buffer | undefined; name: string }> {
    const only =
      head.rcpt.length === 1 && this.isLocal(head.rcpt[0]!) ? this.#recipient(head.rcpt[0]!) : undefined;
    if (only) {
      const name = head.id + MAILDIR_FORM;
      const top = Buffer.from(`Return-Path: <${head.from}>\r\nDelivered-To: ${only}\r\n`, 'utf8');
      const { bytes } = await writeDurable(this.active, name, [top, ...message]);
      return { bytes, copy: undefined, name };
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
    const { bytes } = await writeEnvelopeFile(this.active, head, [tee(message)]);
    return { bytes, copy: keptBytes <= limit ? Buffer.concat(kept, keptBytes) : undefined, name: head.id };
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
    if (id.endsWith(MAILDIR_FORM))
      return this.#deliverLinked(id.slice(0, -MAILDIR_FORM.length), file, queued?.head);
    let head: QueueHead;
    let message: Buffer | (() => NodeJS.ReadableStream & AsyncIterable<Buffer>);
    let size: number;
    if (queued?.copy) {
      head = queued.head;
      message = queued.copy;
      size = queued.copy.length;
    } else {
      const read = await readEnvelopeHead<QueueHead>(file);
      head = read.head;
      message = () => messageStream(file, read.bodyOffset);
      size = read.size - read.bodyOffset;
    }
    const remote: string[] = [];
    for (const rcpt of head.rcpt) {
      if (!this.isLocal(rcpt)) {
        remote.push(rcpt);
        continue;
      }
      const recipient = this.#recipient(rcpt);
      const done = await deliverToMaildir({
        root: this.o.maildir,
        hostname: this.o.hostname,
        recipient,
        sender: head.from,
        message: message as Buffer | (() => import('node:stream').Readable),
        size,
      });
      this.o.logger.info(
        {
          id,
          to: recipient,
          relay: 'maildir',
          delay: (Date.now() - head.arrived) / 1000,
          file: done.file,
          status: 'sent',
        },
        'delivered',
      );
    }
    if (remote.length) {
      const deferredHead: QueueHead = {
        ...head,
        rcpt: remote,
        reason: 'relaying to other domains is not enabled',
        attempts: 1,
      };
      await writeEnvelopeFile(this.deferred, deferredHead, [Buffer.isBuffer(message) ? message : message()]);
      for (const to of remote) {
        this.o.logger.warn({ id, to, status: 'deferred', reason: deferredHead.reason }, 'deferred');
      }
    }
    // every copy is durable in its Maildir (or in deferred/): the queue file may go without an fsync
    await removeLazily(file);
  }

  /** One local recipient, queue file already in Maildir form: link it in, then let the queue file go. */
  async #deliverLinked(id: string, file: string, head: QueueHead | undefined): Promise<void> {
    let recipient = head ? this.#recipient(head.rcpt[0]!) : undefined;
    if (!recipient) {
      // recovery after a crash: the envelope is the Delivered-To header on top of the file
      const top = (await fsp.readFile(file)).subarray(0, 4096).toString('utf8');
      recipient = /^Delivered-To: (.*)\r$/m.exec(top)?.[1];
      if (!recipient) throw new Error(`${file}: no Delivered-To on top of a Maildir-form queue file`);
    }
    const { size } = await fsp.stat(file);
    const done = await linkIntoMaildir({
      root: this.o.maildir,
      hostname: this.o.hostname,
      recipient,
      file,
      size,
    });
    this.o.logger.info(
      {
        id,
        to: recipient,
        relay: 'maildir',
        delay: head ? (Date.now() - head.arrived) / 1000 : undefined,
        file: done.file,
        status: 'sent',
      },
      'delivered',
    );
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
