/**
 * watched-list: a list of entries from the configuration plus files (one entry a line, `#` comments,
 * blank lines ignored), compiled once and compiled again when a file changes. Exports WatchedList.
 *
 * Files are polled (fs.watchFile, once a second, never keeping the process alive), so edits, atomic
 * renames and files created later are all seen; a missing or unreadable file counts as empty and is
 * logged once per change. `current` is always a complete compiled list: lookups never wait for I/O.
 */
import fs from 'node:fs';
import type { Logger } from '@moat/log';

export function parseLines(text: string): string[] {
  return text
    .split(/\r?\n/)
    .map((l) => l.replace(/#.*$/, '').trim())
    .filter((l) => l.length > 0);
}

export class WatchedList<T> {
  #current: T;
  readonly #files: readonly string[];
  readonly #listener = () => this.reload();

  constructor(
    readonly what: string,
    readonly entries: readonly string[],
    files: readonly string[],
    readonly compile: (entries: string[]) => T,
    readonly logger?: Logger,
    pollMs = 1000,
  ) {
    this.#files = files;
    this.#current = this.#load();
    for (const f of files) fs.watchFile(f, { interval: pollMs, persistent: false }, this.#listener);
    // the poller's first stat is taken a moment after the read above: an edit in between would only
    // be seen at the next edit, so read once more after the first poll
    if (files.length) setTimeout(() => this.reload(), pollMs * 2).unref();
  }

  get current(): T {
    return this.#current;
  }

  get size(): number {
    return this.entries.length + this.#files.length;
  }

  #load(): T {
    const all = [...this.entries];
    for (const f of this.#files) {
      try {
        all.push(...parseLines(fs.readFileSync(f, 'utf8')));
      } catch (err) {
        this.logger?.warn({ file: f, err: (err as Error).message }, `${this.what}: cannot read file`);
      }
    }
    return this.compile(all);
  }

  /** Re-reads the files now (also called by the poller). */
  reload(): void {
    try {
      this.#current = this.#load();
      this.logger?.info({ list: this.what }, `${this.what}: reloaded`);
    } catch (err) {
      this.logger?.error(
        { list: this.what, err: (err as Error).message },
        `${this.what}: reload failed, keeping the previous list`,
      );
    }
  }

  close(): void {
    for (const f of this.#files) fs.unwatchFile(f, this.#listener);
  }
}
