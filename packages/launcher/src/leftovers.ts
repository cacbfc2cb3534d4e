/**
 * leftovers: what a launcher killed with -9 leaves behind. Its services notice on their own (their
 * IPC channel to it closes, and they stop); clamd and spamd cannot, so each launcher records its
 * managed daemons' pids in dataDir/daemons/managed.json and the next launcher on that dataDir stops
 * those still running, once the launcher that started them is gone. A pid is matched with its start
 * time from /proc, so a pid the kernel has since given to another process is never signalled.
 */
import fs from 'node:fs';
import path from 'node:path';
import { isAlive, stopPid } from '@moat/daemons';

interface Recorded {
  name: string;
  pid: number;
  start: string | undefined;
}

interface Record {
  launcher: Recorded;
  daemons: Recorded[];
}

const FILE = 'managed.json';

/** The process's start time (clock ticks since boot, /proc/<pid>/stat field 22); undefined without /proc. */
function startTime(pid: number): string | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

/** True while that very process (same pid, same start time) runs. */
function running(p: Recorded): boolean {
  return isAlive(p.pid) && startTime(p.pid) === p.start;
}

function recorded(name: string, pid: number): Recorded {
  return { name, pid, start: startTime(pid) };
}

/** Records this launcher's managed daemons in dir (replacing the previous record). */
export function recordDaemons(dir: string, daemons: readonly { name: string; pid: number }[]): void {
  fs.mkdirSync(dir, { recursive: true });
  const record: Record = {
    launcher: recorded('launcher', process.pid),
    daemons: daemons.map((d) => recorded(d.name, d.pid)),
  };
  fs.writeFileSync(path.join(dir, FILE), JSON.stringify(record) + '\n');
}

/** Removes the record once this launcher has stopped its daemons. */
export function forgetDaemons(dir: string): void {
  fs.rmSync(path.join(dir, FILE), { force: true });
}

/**
 * Stops the daemons a launcher that is gone left running (reporting each with say), and removes its
 * record. A record whose launcher still runs is left alone.
 */
export async function stopLeftovers(dir: string, say: (line: string) => void): Promise<void> {
  let record: Record;
  try {
    record = JSON.parse(fs.readFileSync(path.join(dir, FILE), 'utf8')) as Record;
  } catch {
    return; // none, or unreadable: nothing we could match safely
  }
  if (running(record.launcher)) return;
  for (const d of record.daemons) {
    if (!running(d)) continue;
    say(
      `stopping ${d.name} (pid ${d.pid}), left running by launcher ${record.launcher.pid} that did not stop`,
    );
    await stopPid(d.pid);
  }
  forgetDaemons(dir);
}

/**
 * Takes dataDir's launcher lock (dir/launcher.json: this pid and its start time), released when this
 * process exits. Returns the pid of another launcher still running on the same dataDir instead: two
 * launchers would fight over the managed daemons' files and every port.
 */
export function lockDataDir(dir: string): number | undefined {
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, 'launcher.json');
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      fs.writeFileSync(file, JSON.stringify(recorded('launcher', process.pid)) + '\n', { flag: 'wx' });
      process.once('exit', () => fs.rmSync(file, { force: true }));
      return undefined;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    let holder: Recorded | undefined;
    try {
      holder = JSON.parse(fs.readFileSync(file, 'utf8')) as Recorded;
    } catch {
      // half written by a launcher starting right now, or garbage: judged stale below
    }
    if (holder && running(holder)) return holder.pid;
    fs.rmSync(file, { force: true }); // left by a launcher that did not stop
  }
  return undefined;
}
