/**
 * maildir: reads what delivery put into <root>/<domain>/<local>/new.
 */
import fs from 'node:fs';
import path from 'node:path';

export function maildirMessages(root: string, address: string): { file: string; text: string }[] {
  const [local, domain] = address.toLowerCase().split('@') as [string, string];
  const dir = path.join(root, domain, local, 'new');
  if (!fs.existsSync(dir)) return [];
  return fs
    .readdirSync(dir)
    .sort()
    .map((name) => ({ file: path.join(dir, name), text: fs.readFileSync(path.join(dir, name), 'latin1') }));
}

/** Header field values by name (unfolded), in order. */
export function headerValues(text: string, name: string): string[] {
  const head = text.split(/\r?\n\r?\n/, 1)[0] ?? '';
  const unfolded = head.replace(/\r?\n[ \t]+/g, ' ');
  return unfolded
    .split(/\r?\n/)
    .filter((l) => l.toLowerCase().startsWith(name.toLowerCase() + ':'))
    .map((l) => l.slice(name.length + 1).trim());
}

/** Every file under dir (recursively), for "nothing was left behind" checks. */
export function filesUnder(dir: string): string[] {
  if (!fs.existsSync(dir)) return [];
  const out: string[] = [];
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...filesUnder(p));
    else out.push(p);
  }
  return out;
}
