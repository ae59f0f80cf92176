/**
 * A worker gives up root after it bound its sockets (issue 13): no supplementary groups,
 * then the group, then the user (in that order: once the uid is not 0, setgid would be
 * refused), and then it proves the drop held: every uid and gid is the target's, and
 * setuid(0), seteuid(0) and setgid(0) are now refused. glibc applies set*id to every
 * thread of the process (libuv's pool included).
 *
 * After the uid changes the kernel clears the process's dumpable flag (prctl(2),
 * PR_SET_DUMPABLE; fs.suid_dumpable is 0 by default), so another process of the same
 * unprivileged account can neither ptrace the worker nor read its memory: keys it gets
 * later from the broker stay its own.
 */
import { readFileSync } from 'node:fs';
import { GatehouseError } from './errors.js';

export interface Account {
  uid: number;
  gid: number;
}

/**
 * The uid and primary gid of a local account (a name from /etc/passwd, or "uid" / "uid:gid"
 * as numbers). Service accounts are local; a name only an NSS module knows is not found.
 */
export function lookupAccount(user: string, passwdFile = '/etc/passwd'): Account {
  const numeric = /^(\d{1,10})(?::(\d{1,10}))?$/.exec(user);
  if (numeric) {
    const uid = Number(numeric[1]);
    return { uid, gid: numeric[2] !== undefined ? Number(numeric[2]) : uid };
  }
  let text: string;
  try {
    text = readFileSync(passwdFile, 'utf8');
  } catch {
    throw new GatehouseError('E_PRIVDROP', `cannot read ${passwdFile} to find user "${user}"`);
  }
  // passwd(5): name:password:UID:GID:GECOS:directory:shell
  for (const line of text.split('\n')) {
    const f = line.split(':');
    if (f.length >= 7 && f[0] === user && /^\d+$/.test(f[2]!) && /^\d+$/.test(f[3]!)) return { uid: Number(f[2]), gid: Number(f[3]) };
  }
  throw new GatehouseError('E_PRIVDROP', `no local user "${user}"`);
}

/** Drops to `to` for good, or throws E_PRIVDROP (the caller must then exit, not serve). */
export function dropPrivileges(to: Account): void {
  const p = process;
  if (!p.setuid || !p.setgid || !p.setgroups || !p.getuid || !p.geteuid || !p.seteuid)
    throw new GatehouseError('E_PRIVDROP', 'this platform has no setuid/setgid');
  if (to.uid === 0 || to.gid === 0) throw new GatehouseError('E_PRIVDROP', 'dropping privileges to uid or gid 0 drops nothing');
  if (p.geteuid() !== 0) throw new GatehouseError('E_PRIVDROP', 'dropping privileges needs root (the supervisor starts workers as root)');
  try {
    p.setgroups([]);
    p.setgid(to.gid);
    p.setuid(to.uid);
  } catch (err) {
    throw new GatehouseError('E_PRIVDROP', `dropping privileges failed: ${(err as Error).message}`);
  }
  const groups = p.getgroups!();
  if (
    p.getuid() !== to.uid ||
    p.geteuid() !== to.uid ||
    p.getgid!() !== to.gid ||
    p.getegid!() !== to.gid ||
    groups.some((g) => g !== to.gid)
  )
    throw new GatehouseError('E_PRIVDROP', 'after dropping privileges the process still has other ids');
  for (const [name, regain] of [
    ['setuid(0)', () => p.setuid!(0)],
    ['seteuid(0)', () => p.seteuid!(0)],
    ['setgid(0)', () => p.setgid!(0)],
  ] as const) {
    let regained = true;
    try {
      regain();
    } catch {
      regained = false;
    }
    if (regained) throw new GatehouseError('E_PRIVDROP', `after dropping privileges ${name} still succeeds`);
  }
}
