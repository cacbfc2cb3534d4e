/**
 * mime: one streaming pass over the spooled message that lists every part the banned-files check must
 * judge (declared name, declared type, type detected from magic bytes), opening zip archives (yauzl)
 * to archiveMaxDepth, and notes the MIME errors the bad-header check reports.
 *
 * The MIME structure comes from @zone-eu/mailsplit's Splitter, the streaming parser mailparser itself is
 * built on (same header, RFC 2231 and encoded-word decoding). mailparser's MailParser is not used here
 * because it collects every text part whole in memory (its textContent), and memory per message must
 * stay bounded whatever its size: here a part is decoded only until its type is known (512 bytes), and
 * only a zip archive is held, up to archiveMaxSize.
 */
import path from 'node:path';
import type { Readable, Transform } from 'node:stream';
import { Splitter, type MimeNode } from '@zone-eu/mailsplit';
import yauzl from 'yauzl';

export interface PartAttrs {
  /** Declared file name (MIME) or path inside the archive. */
  name?: string;
  /** Declared MIME type. */
  type?: string;
  /** Type from magic bytes, in amavis' file(1) style: `.exe-ms`, `.elf`, `.zip`, ... */
  detected?: string;
  /** Encrypted, or could not be decoded: matches the rule text UNDECIPHERABLE. */
  undecipherable?: boolean;
}

export interface PartInfo {
  /** Containers first (the archives it sits in), the part itself last. */
  chain: PartAttrs[];
}

export interface MimeSummary {
  parts: PartInfo[];
  /** amavis' CC_BADH,1 texts ("MIME error: ..."). */
  mimeErrors: string[];
  /** Limits reached while looking (archive too deep, too large, too many entries). */
  notes: string[];
  /**
   * Why the walk stopped before the end of the message (the parser's limits: more than 1000 parts, a
   * part's header over 1 MB; or the spool failed): the parts after that point were never seen.
   */
  stopped?: string;
}

export interface WalkOptions {
  archiveMaxDepth: number;
  archiveMaxSize: number;
  archiveMaxFiles: number;
  /** Bytes decompressed from archive entries per message, all archives together (amavis' $MAX_EXPANSION_QUOTA). */
  archiveMaxExpansion?: number;
}

/** The default of filter.archiveMaxExpansion. */
export const DEFAULT_MAX_EXPANSION = 100 * 1024 * 1024;

const SNIFF_BYTES = 512;

/**
 * Archive entries listed so far per walk, all archives of the message together: archiveMaxFiles is a
 * budget for the whole message (amavis' $MAXFILES), not per archive, or nested archives would multiply
 * it (a zip of 1000 entries that each are that zip again, four deep, is 10^12 entries; with entries that
 * all point at one stored copy it is a few kilobytes).
 */
const entriesListed = new WeakMap<MimeSummary, number>();

/**
 * Bytes decompressed so far per walk, all archives together: entries may overlap (every entry of a
 * zip pointing at one stored copy of a large one), so the entry budget alone still let a 12 MB message
 * make filter decompress gigabytes.
 */
const bytesExpanded = new WeakMap<MimeSummary, number>();

const sig = (bytes: number[] | string, at = 0) => ({
  bytes: typeof bytes === 'string' ? Buffer.from(bytes, 'latin1') : Buffer.from(bytes),
  at,
});

/** Magic bytes, first match wins; built once (detectType runs for every part of every message). */
const SIGNATURES: { type: string; sigs: { bytes: Buffer; at: number }[] }[] = [
  { type: '.exe-ms', sigs: [sig('MZ')] },
  { type: '.elf', sigs: [sig([0x7f, 0x45, 0x4c, 0x46])] },
  {
    type: '.macho',
    sigs: [
      sig([0xfe, 0xed, 0xfa, 0xce]),
      sig([0xfe, 0xed, 0xfa, 0xcf]),
      sig([0xce, 0xfa, 0xed, 0xfe]),
      sig([0xcf, 0xfa, 0xed, 0xfe]),
    ],
  },
  { type: '.zip', sigs: [sig('PK\x03\x04'), sig('PK\x05\x06')] },
  { type: '.gz', sigs: [sig([0x1f, 0x8b])] },
  { type: '.bz2', sigs: [sig('BZh')] },
  { type: '.rar', sigs: [sig('Rar!\x1a\x07')] },
  { type: '.7z', sigs: [sig([0x37, 0x7a, 0xbc, 0xaf, 0x27, 0x1c])] },
  { type: '.cab', sigs: [sig('MSCF')] },
  { type: '.doc', sigs: [sig([0xd0, 0xcf, 0x11, 0xe0, 0xa1, 0xb1, 0x1a, 0xe1])] },
  { type: '.pdf', sigs: [sig('%PDF-')] },
  { type: '.tar', sigs: [sig('ustar', 257)] },
  { type: '.sh', sigs: [sig('#!')] },
];

/** The type of a file from its first bytes, named as amavis' file(1) mapping names them. */
export function detectType(head: Buffer): string | undefined {
  for (const { type, sigs } of SIGNATURES) {
    for (const { bytes, at } of sigs) {
      if (
        head.length >= at + bytes.length &&
        head.compare(bytes, 0, bytes.length, at, at + bytes.length) === 0
      )
        return type;
    }
  }
  return undefined;
}

const KNOWN_ENCODINGS = new Set(['', '7bit', '8bit', 'binary', 'base64', 'quoted-printable']);

/** Reads at most `limit` bytes (+1, to tell "more") of a stream, then stops it. */
async function readUpTo(stream: Readable, limit: number): Promise<{ buf: Buffer; more: boolean }> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const chunk of stream as AsyncIterable<Buffer>) {
    chunks.push(chunk);
    n += chunk.length;
    if (n > limit) {
      stream.destroy();
      return { buf: Buffer.concat(chunks).subarray(0, limit), more: true };
    }
  }
  return { buf: Buffer.concat(chunks), more: false };
}

function openZip(buf: Buffer): Promise<yauzl.ZipFile> {
  return new Promise((resolve, reject) =>
    yauzl.fromBuffer(
      buf,
      { lazyEntries: true, decodeStrings: true, validateEntrySizes: true, strictFileNames: false },
      (err, zip) => (err ? reject(err) : resolve(zip)),
    ),
  );
}

function entryStream(zip: yauzl.ZipFile, entry: yauzl.Entry): Promise<Readable> {
  return new Promise((resolve, reject) =>
    zip.openReadStream(entry, (err, stream) => (err ? reject(err) : resolve(stream))),
  );
}

/** Lists a zip's entries into `out` (the zip at nesting level `depth`, 1 = attached to the message), opening nested zips while depth and size allow. */
export async function walkZip(
  buf: Buffer,
  chain: PartAttrs[],
  depth: number,
  o: WalkOptions,
  out: MimeSummary,
): Promise<void> {
  const label = chain.map((a) => a.name ?? a.detected ?? '?').join('/');
  let zip: yauzl.ZipFile;
  try {
    zip = await openZip(buf);
  } catch (err) {
    chain[chain.length - 1]!.undecipherable = true;
    out.notes.push(`${label}: not a readable zip (${(err as Error).message})`);
    return;
  }
  const handle = async (entry: yauzl.Entry): Promise<boolean> => {
    if (entry.fileName.endsWith('/')) return true;
    const listed = (entriesListed.get(out) ?? 0) + 1;
    if (listed > o.archiveMaxFiles) {
      out.notes.push(
        `${label}: more than archiveMaxFiles (${o.archiveMaxFiles}) archive entries in the message, rest not listed`,
      );
      return false;
    }
    entriesListed.set(out, listed);
    const quota = o.archiveMaxExpansion ?? DEFAULT_MAX_EXPANSION;
    if ((bytesExpanded.get(out) ?? 0) > quota) {
      out.notes.push(
        `${label}: more than archiveMaxExpansion (${quota} bytes) decompressed in the message, rest not listed`,
      );
      return false;
    }
    const expanded = (buf: Buffer) => bytesExpanded.set(out, (bytesExpanded.get(out) ?? 0) + buf.length);
    const attrs: PartAttrs = { name: entry.fileName };
    const inner = [...chain, attrs];
    out.parts.push({ chain: inner });
    if (entry.isEncrypted()) {
      attrs.undecipherable = true;
      return true;
    }
    if (entry.uncompressedSize === 0) return true;
    let stream: Readable;
    try {
      stream = await entryStream(zip, entry);
    } catch {
      attrs.undecipherable = true;
      return true;
    }
    // the first bytes tell the type; only a zip that may be opened is read further
    const wantAll = depth + 1 <= o.archiveMaxDepth && entry.uncompressedSize <= o.archiveMaxSize;
    try {
      const head = await readUpTo(
        stream,
        wantAll && /\.zip$/i.test(entry.fileName) ? o.archiveMaxSize : SNIFF_BYTES,
      );
      expanded(head.buf);
      let content = head.buf;
      attrs.detected = detectType(content);
      if (attrs.detected === '.zip') {
        if (!wantAll) {
          out.notes.push(
            `${label}/${entry.fileName}: ${depth + 1 > o.archiveMaxDepth ? 'deeper than archiveMaxDepth' : 'larger than archiveMaxSize'}, not opened`,
          );
          return true;
        }
        if (head.more || content.length < entry.uncompressedSize) {
          const again = await entryStream(zip, entry);
          const all = await readUpTo(again, o.archiveMaxSize);
          expanded(all.buf);
          if (all.more) {
            out.notes.push(`${label}/${entry.fileName}: larger than archiveMaxSize, not opened`);
            return true;
          }
          content = all.buf;
        }
        await walkZip(content, inner, depth + 1, o, out);
      }
    } catch {
      attrs.undecipherable = true;
    }
    return true;
  };
  await new Promise<void>((resolve, reject) => {
    zip.on('entry', (entry: yauzl.Entry) => {
      handle(entry).then(
        (goOn) => {
          if (goOn) zip.readEntry();
          else {
            zip.close();
            resolve();
          }
        },
        (err: unknown) => reject(err as Error),
      );
    });
    zip.on('end', () => resolve());
    zip.on('error', (err: Error) => {
      chain[chain.length - 1]!.undecipherable = true;
      out.notes.push(`${label}: zip error (${err.message})`);
      resolve();
    });
    zip.readEntry();
  });
}

interface Leaf {
  attrs: PartAttrs;
  decoder: Transform;
  chunks: Buffer[];
  bytes: number;
  /** Decoding stopped: the type is known and it is not an archive to open. */
  done: boolean;
  tooLarge: boolean;
  finished: Promise<void>;
}

/** Walks the message once. Never throws: a parse failure is a MIME error in the summary. */
export async function walkMime(source: Readable, o: WalkOptions): Promise<MimeSummary> {
  const out: MimeSummary = { parts: [], mimeErrors: [], notes: [] };
  const pending: Promise<void>[] = [];
  let leaf: Leaf | undefined;

  const closeLeaf = () => {
    if (!leaf) return;
    const l = leaf;
    leaf = undefined;
    l.decoder.end();
    pending.push(
      l.finished.then(async () => {
        const content = Buffer.concat(l.chunks);
        l.attrs.detected = detectType(content);
        if (l.attrs.detected === '.zip') {
          if (l.tooLarge) {
            out.notes.push(`${l.attrs.name ?? 'zip'}: larger than archiveMaxSize, not opened`);
          } else if (o.archiveMaxDepth >= 1) {
            await walkZip(content, [l.attrs], 1, o, out);
          }
        }
      }),
    );
  };

  const openLeaf = (node: MimeNode) => {
    const attrs: PartAttrs = {};
    if (node.filename) attrs.name = String(node.filename);
    if (node.contentType) attrs.type = String(node.contentType);
    out.parts.push({ chain: [attrs] });
    const decoder = node.getDecoder() as Transform;
    const l: Leaf = {
      attrs,
      decoder,
      chunks: [],
      bytes: 0,
      done: false,
      tooLarge: false,
      finished: new Promise<void>((resolve) => {
        decoder.on('end', resolve);
        decoder.on('close', resolve);
        decoder.on('error', () => {
          attrs.undecipherable = true;
          resolve();
        });
      }),
    };
    decoder.on('data', (d: Buffer) => {
      if (l.done) return;
      l.chunks.push(d);
      l.bytes += d.length;
      if (l.bytes < SNIFF_BYTES) return;
      const head = l.chunks.length === 1 ? l.chunks[0]! : Buffer.concat(l.chunks);
      if (detectType(head) !== '.zip') {
        l.chunks = [head.subarray(0, SNIFF_BYTES)];
        l.done = true;
      } else if (l.bytes > o.archiveMaxSize) {
        l.chunks = [head.subarray(0, SNIFF_BYTES)];
        l.tooLarge = true;
        l.done = true;
      }
    });
    leaf = l;
  };

  const splitter = new Splitter({ maxHeadSize: 1024 * 1024 });
  source.on('error', (err) => splitter.destroy(err));
  try {
    for await (const chunk of source.pipe(splitter) as AsyncIterable<
      MimeNode | { type: 'data' | 'body'; value: Buffer; node: MimeNode }
    >) {
      if (chunk.type === 'node') {
        closeLeaf();
        const node = chunk as MimeNode;
        const ct = node.contentType ? String(node.contentType) : '';
        if (ct.startsWith('multipart/') && !node._boundary)
          out.mimeErrors.push(`MIME error: ${ct} without a boundary`);
        const enc = String(node.encoding || '');
        if (!KNOWN_ENCODINGS.has(enc))
          out.mimeErrors.push(`MIME error: unknown Content-Transfer-Encoding "${enc.slice(0, 40)}"`);
        if (!node.multipart && !node.rfc822) openLeaf(node);
      } else if (chunk.type === 'body') {
        if (leaf && !leaf.done && leaf.decoder.writable) {
          if (!leaf.decoder.write(chunk.value)) {
            const d = leaf.decoder;
            await new Promise<void>((r) => {
              d.once('drain', r);
              d.once('close', r);
              d.once('error', () => r());
            });
          }
        }
      } else {
        closeLeaf();
      }
    }
  } catch (err) {
    const why = (err as Error).message.slice(0, 200);
    out.mimeErrors.push(`MIME error: ${why}`);
    out.stopped = why;
  }
  closeLeaf();
  await Promise.allSettled(pending);
  return out;
}

/** The strings a banned rule is matched against, for one link of a part's chain. */
export function candidates(a: PartAttrs): string[] {
  const list: string[] = [];
  if (a.name) list.push(a.name, path.posix.basename(a.name));
  if (a.type) list.push(a.type);
  if (a.detected) list.push(a.detected);
  if (a.undecipherable) list.push('UNDECIPHERABLE');
  return [...new Set(list)];
}
