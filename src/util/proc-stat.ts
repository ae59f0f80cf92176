/**
 * A process's state and start time from /proc/PID/stat (proc(5)), to tell a process from
 * a later one that got the same pid: the start time (field 22, clock ticks after boot) of a
 * pid is fixed for the life of that process, across exec, and a reused pid has a later one.
 *
 * The second field (comm, in parentheses) is whatever the process named itself
 * (prctl PR_SET_NAME, process.title): it can hold spaces, parentheses and ')' itself, so
 * the fields after it are read from after the LAST ')'; every field there is a number or
 * the one-letter state.
 */
import { readFileSync } from 'node:fs';

export interface ProcStat {
  pid: number;
  /** Field 3: R, S, D, Z (zombie), X (dead), T, t, I, ... */
  state: string;
  /** Field 4. */
  ppid: number;
  /** Field 22, decimal digits as written (kept as text: compared, never computed with). */
  startTime: string;
}

/** The fields of one /proc/PID/stat text, or null when it does not have their shape. */
export function parseProcStat(text: string): ProcStat | null {
  const open = text.indexOf(' (');
  const close = text.lastIndexOf(')');
  if (open <= 0 || close < open) return null;
  const pidText = text.slice(0, open);
  if (!/^[1-9]\d{0,9}$/.test(pidText)) return null;
  if (text[close + 1] !== ' ') return null;
  // fields 3, 4, ... : tokens[i] is field i + 3
  const tokens = text
    .slice(close + 2)
    .replace(/\n$/, '')
    .split(' ');
  if (tokens.length < 20) return null;
  const [state, ppid] = tokens;
  const startTime = tokens[19]!;
  if (!/^[A-Za-z]$/.test(state!) || !/^\d+$/.test(ppid!) || !/^\d{1,20}$/.test(startTime)) return null;
  return { pid: Number(pidText), state: state!, ppid: Number(ppid), startTime };
}

/** /proc/PID/stat of a live or zombie process, or null (no such process, or unreadable). */
export function readProcStat(pid: number): ProcStat | null {
  if (!Number.isInteger(pid) || pid <= 0) return null;
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'latin1');
  } catch {
    return null;
  }
  const st = parseProcStat(text);
  return st && st.pid === pid ? st : null;
}

/** A process that has exited but is not yet reaped (Z) or is being torn down (X). */
export function isDead(st: ProcStat): boolean {
  return st.state === 'Z' || st.state === 'X' || st.state === 'x';
}
