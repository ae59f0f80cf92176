/**
 * The supervisor's key broker (issue 13, "workers get keys only after they prove who they
 * are"). The supervisor alone reads the gateway's private keys (the identity key of
 * src/store/identity.ts, the TLS key of src/turn/listeners.ts) and hands them to the
 * broker as named byte strings; relay workers, which drop privileges after binding
 * (drop-privileges.ts), ask for one by name over a Unix socket (key-client.ts).
 *
 * A request is answered with the key only when the peer of that connection is a worker
 * this broker spawned and that is still the same process:
 *
 *   - pid and uid come from SO_PEERCRED (peercred.ts): the kernel's record of the process
 *     that connected, which the peer cannot forge;
 *   - the pid must be one spawnWorker() recorded, the uid the one that worker was to drop
 *     to (so a worker still running as root, before its drop, is refused too);
 *   - /proc/PID/stat is read again and its start time must equal the one recorded at spawn
 *     (a pid reused by another process after the worker died has a later start time), and
 *     the process must not be a zombie; a worker whose exit the broker saw is forgotten.
 *
 * Anything else is refused: the peer gets {"ok":false,"error":"refused"} (no reason: a
 * foreign process learns nothing), the log gets pid, uid and the reason, never key
 * material. Without the SO_PEERCRED addon every request is refused (fail closed), and the
 * log says why once.
 *
 * The socket lives in a private directory the broker owns: mode 0700 when workers keep the
 * supervisor's uid; with `socketGroup` (the workers' group) the directory is 0710 and the
 * socket 0660 in that group, so a worker that dropped to an unprivileged uid can connect
 * and other accounts cannot reach the socket at all. File modes only narrow who can knock;
 * the SO_PEERCRED match above is the gate (another process of the workers' own account can
 * connect, and is refused).
 *
 * Protocol: one JSON object per line (newline-terminated UTF-8), request
 * {"key":"<name>"}, answer {"ok":true,"key":"<base64>"} or {"ok":false,"error":"refused"}.
 * A request line is at most `maxRequestBytes`; a malformed one (too long, not strict JSON,
 * other members, a bad name) is answered {"ok":false,"error":"malformed"} and closes that
 * connection only. After a refusal the connection is closed too.
 */
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { chmodSync, chownSync, lstatSync, mkdirSync, rmdirSync, unlinkSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { GatehouseError } from './errors.js';
import type { Logger } from './log.js';
import { loadPeerCred, PEERCRED_ADDON, socketFd, type PeerCred, type PeerCredAddon } from './peercred.js';
import { isDead, readProcStat } from './proc-stat.js';
import { parseStrictObject } from './strict-json.js';
import { Supervisor } from './supervise.js';

/** What the broker recorded of a worker when it spawned it. */
export interface WorkerRecord {
  readonly pid: number;
  /** The uid the worker runs as after it dropped privileges (the only uid it is served under). */
  readonly uid: number;
  /** Field 22 of /proc/PID/stat read right after the spawn (proc-stat.ts). */
  readonly startTime: string;
  readonly child: ChildProcess;
  /** The key names this worker may have (null: every key the broker holds). */
  readonly allowed: ReadonlySet<string> | null;
}

export type RefusalReason =
  | 'no_peercred' // the addon is not built: nobody can be identified
  | 'no_fd'
  | 'peercred_failed'
  | 'unknown_pid' // not a worker this broker spawned (or one that exited)
  | 'uid_mismatch'
  | 'process_gone'
  | 'start_time_mismatch'
  | 'unknown_key'; // an identified worker asked for a key the broker does not hold, or not for it

export interface KeyBrokerOptions {
  /** The private directory of the socket: created (or an existing one of ours, writable by nobody else). */
  dir: string;
  /** The keys by name, as the supervisor read them. */
  keys: ReadonlyMap<string, Buffer>;
  log: Logger;
  /** The workers' gid: the directory becomes 0710 and the socket 0660 in that group. */
  socketGroup?: number;
  supervisor?: Supervisor;
  /** The SO_PEERCRED addon; default loadPeerCred(). null: refuse everything (the fail-closed path). */
  peercred?: PeerCredAddon | null;
  /** Connections open at once (further ones are dropped by the server). Default 32. */
  maxConnections?: number;
  /** Longest request line, newline included. Default 256. */
  maxRequestBytes?: number;
  /** Requests on one connection. Default 8. */
  maxRequestsPerConnection?: number;
  /** A connection idle this long is closed. Default 5000 ms. */
  idleMs?: number;
  /** Refusal log lines per minute (the rest are only counted). Default 20. */
  refusalLogsPerMinute?: number;
}

/** Key names: short, lower-case words (they reach log lines; key material never does). */
const KEY_NAME = /^[a-z][a-z0-9_.-]{0,63}$/;
/** sun_path holds 108 bytes with its terminating NUL (unix(7)). */
const SUN_PATH_MAX = 107;

export class KeyBroker {
  readonly socketPath: string;
  /** Refusals by reason (for /metrics once workers exist, and for tests). */
  readonly refusals = new Map<RefusalReason, number>();
  /** Keys handed over, by name. */
  readonly served = new Map<string, number>();
  private readonly records = new Map<number, WorkerRecord>();
  private readonly conns = new Set<Socket>();
  private readonly sup: Supervisor;
  private readonly peercred: PeerCredAddon | null;
  private readonly logWindow = { minute: -1, n: 0 };
  private createdDir = false;

  private constructor(
    private readonly opts: KeyBrokerOptions,
    private readonly server: Server,
  ) {
    this.socketPath = join(opts.dir, 'keys.sock');
    this.sup = opts.supervisor ?? new Supervisor(opts.log);
    this.peercred = opts.peercred === undefined ? loadPeerCred() : opts.peercred;
  }

  /** Makes the directory, listens, and sets the modes (the socket is never reachable before they are set). */
  static async start(opts: KeyBrokerOptions): Promise<KeyBroker> {
    if (process.platform !== 'linux') throw new GatehouseError('E_KEY_BROKER', 'the key broker needs Linux (SO_PEERCRED, /proc)');
    const server = createServer({ allowHalfOpen: false });
    const b = new KeyBroker(opts, server);
    if (Buffer.byteLength(b.socketPath) > SUN_PATH_MAX)
      throw new GatehouseError('E_KEY_BROKER', `key broker socket path is longer than ${SUN_PATH_MAX} bytes: ${b.socketPath}`);
    b.createdDir = privateDir(opts.dir);
    removeStaleSocket(b.socketPath);
    server.maxConnections = opts.maxConnections ?? 32;
    server.on(
      'connection',
      b.sup.guard(
        'keybroker.connection',
        (s: Socket) => b.accept(s),
        (_e, s: Socket) => s.destroy(),
      ),
    );
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(b.socketPath, () => {
        server.off('error', reject);
        resolve();
      });
    });
    server.on('error', (err) => b.sup.caught('keybroker.server', err));
    const uid = process.geteuid!();
    if (opts.socketGroup !== undefined) {
      // Socket first, directory last: until the directory opens to the group, nobody but us reaches the socket.
      chownSync(b.socketPath, uid, opts.socketGroup);
      chmodSync(b.socketPath, 0o660);
      chownSync(opts.dir, uid, opts.socketGroup);
      chmodSync(opts.dir, 0o710);
    } else {
      chmodSync(b.socketPath, 0o600);
    }
    if (!b.peercred)
      opts.log.warn(
        { addon: PEERCRED_ADDON },
        'key broker: the SO_PEERCRED addon is not built (npm run build:native); every key request is refused',
      );
    return b;
  }

  /**
   * Spawns a worker and records its pid, the uid it will drop to, and its start time. The
   * worker starts with the supervisor's privileges (it binds first) and must drop to
   * `workerUid` before it asks for a key: SO_PEERCRED reports the uid at connect(2).
   */
  spawnWorker(
    command: string,
    args: readonly string[],
    opts: SpawnOptions & { workerUid: number; keyNames?: readonly string[] },
  ): ChildProcess {
    const { workerUid: uid, keyNames, ...spawnOpts } = opts;
    if (!Number.isInteger(uid) || uid < 0)
      throw new GatehouseError('E_KEY_BROKER', 'spawnWorker: workerUid must be a non-negative integer');
    const child = spawn(command, args, spawnOpts);
    // A failed spawn is reported as 'error' after this returns: never an uncaught exception.
    child.on('error', (err) => this.sup.caught('keybroker.spawn', err));
    const pid = child.pid;
    // libuv returns from spawn after the child's exec succeeded, so the process exists now;
    // its start time does not change across exec.
    const st = pid === undefined ? null : readProcStat(pid);
    if (pid === undefined || !st || isDead(st)) {
      child.kill('SIGKILL');
      throw new GatehouseError('E_KEY_BROKER', `spawnWorker: ${command} did not start`);
    }
    const rec: WorkerRecord = { pid, uid, startTime: st.startTime, child, allowed: keyNames ? new Set(keyNames) : null };
    this.records.set(pid, rec);
    child.once('exit', () => {
      if (this.records.get(pid) === rec) this.records.delete(pid);
    });
    return child;
  }

  /** The workers recorded now, by pid. */
  workers(): ReadonlyMap<number, WorkerRecord> {
    return this.records;
  }

  /** Stops listening, closes every connection, removes the socket (and the directory if it made it). */
  async close(): Promise<void> {
    for (const s of this.conns) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    try {
      unlinkSync(this.socketPath);
    } catch {
      // already gone
    }
    if (this.createdDir) {
      try {
        rmdirSync(this.opts.dir);
      } catch {
        // someone put something there: leave it
      }
    }
  }

  private accept(s: Socket): void {
    this.conns.add(s);
    s.once('close', () => this.conns.delete(s));
    s.on('error', () => s.destroy());
    s.setTimeout(this.opts.idleMs ?? 5000, () => s.destroy());
    const maxLine = this.opts.maxRequestBytes ?? 256;
    let left = this.opts.maxRequestsPerConnection ?? 8;
    let buf: Buffer = Buffer.alloc(0);
    s.on(
      'data',
      this.sup.guard(
        'keybroker.data',
        (chunk: Buffer) => {
          if (!s.writable) return; // answered and closing: nothing more is read
          buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
          let nl: number;
          while (!s.destroyed && s.writable && (nl = buf.indexOf(0x0a)) >= 0) {
            if (nl + 1 > maxLine) return this.malformed(s);
            const line = buf.subarray(0, nl);
            buf = buf.subarray(nl + 1);
            const name = requestedKey(line);
            if (name === null) return this.malformed(s);
            if (!this.answer(s, name)) return;
            if (--left === 0) return void s.end();
          }
          if (buf.length >= maxLine) this.malformed(s);
        },
        () => s.destroy(),
      ),
    );
  }

  /** Answers one well-formed request; false when it was refused (and the connection is closing). */
  private answer(s: Socket, name: string): boolean {
    const who = this.identify(s);
    if ('reason' in who) return this.refuse(s, name, who.reason, who.cred);
    const key = this.opts.keys.get(name);
    if (!key || (who.rec.allowed && !who.rec.allowed.has(name))) return this.refuse(s, name, 'unknown_key', who.cred);
    this.served.set(name, (this.served.get(name) ?? 0) + 1);
    this.opts.log.info({ pid: who.cred.pid, uid: who.cred.uid, keyName: name }, 'key broker: key handed to worker');
    s.write(JSON.stringify({ ok: true, key: key.toString('base64') }) + '\n');
    return true;
  }

  /** The worker record this connection's peer matches, or why it matches none. */
  private identify(s: Socket): { cred: PeerCred; rec: WorkerRecord } | { reason: RefusalReason; cred?: PeerCred } {
    if (!this.peercred) return { reason: 'no_peercred' };
    const fd = socketFd(s);
    if (fd === null) return { reason: 'no_fd' };
    let cred: PeerCred;
    try {
      cred = this.peercred.peercred(fd);
    } catch {
      return { reason: 'peercred_failed' };
    }
    const rec = this.records.get(cred.pid);
    if (!rec) return { reason: 'unknown_pid', cred };
    if (cred.uid !== rec.uid) return { reason: 'uid_mismatch', cred };
    const st = readProcStat(cred.pid);
    if (!st || isDead(st) || rec.child.exitCode !== null || rec.child.signalCode !== null) return { reason: 'process_gone', cred };
    if (st.startTime !== rec.startTime) return { reason: 'start_time_mismatch', cred };
    return { cred, rec };
  }

  private refuse(s: Socket, name: string, reason: RefusalReason, cred?: PeerCred): false {
    this.refusals.set(reason, (this.refusals.get(reason) ?? 0) + 1);
    // no_peercred was said once at start; the others name the peer (never any key bytes)
    if (reason !== 'no_peercred' && this.mayLog())
      this.opts.log.warn({ pid: cred?.pid ?? null, uid: cred?.uid ?? null, keyName: name, reason }, 'key broker: request refused');
    closeWith(s, { ok: false, error: 'refused' });
    return false;
  }

  private malformed(s: Socket): void {
    this.opts.log.debug('key broker: malformed request, connection closed');
    closeWith(s, { ok: false, error: 'malformed' });
  }

  private mayLog(): boolean {
    const minute = Math.floor(Date.now() / 60_000);
    if (minute !== this.logWindow.minute) Object.assign(this.logWindow, { minute, n: 0 });
    return ++this.logWindow.n <= (this.opts.refusalLogsPerMinute ?? 20);
  }
}

/** Writes the last answer and closes the connection once it is flushed, whatever the peer does. */
function closeWith(s: Socket, answer: { ok: false; error: string }): void {
  s.end(JSON.stringify(answer) + '\n', () => s.destroy());
}

/** The name in a request line {"key":"<name>"} (that member only), or null when malformed. */
function requestedKey(line: Buffer): string | null {
  const o = parseStrictObject(line);
  if (!o) return null;
  const names = Object.keys(o);
  if (names.length !== 1 || typeof o.key !== 'string' || !KEY_NAME.test(o.key)) return null;
  return o.key;
}

/**
 * Creates dir with mode 0700 (true), or accepts an existing one only when it is a real
 * directory (not a symlink) owned by us that no one else can write (false).
 */
function privateDir(dir: string): boolean {
  try {
    mkdirSync(dir, { mode: 0o700 });
    chmodSync(dir, 0o700); // the umask may have taken bits off; make it exactly 0700
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
  const st = lstatSync(dir);
  if (!st.isDirectory() || st.uid !== process.geteuid!() || (st.mode & 0o022) !== 0)
    throw new GatehouseError('E_KEY_BROKER', `key broker directory ${dir} must be a directory of ours that no one else can write`);
  chmodSync(dir, 0o700);
  return false;
}

/** A socket file left by an earlier run is removed; anything else at that path stops the start. */
function removeStaleSocket(path: string): void {
  let st;
  try {
    st = lstatSync(path);
  } catch {
    return;
  }
  if (!st.isSocket()) throw new GatehouseError('E_KEY_BROKER', `${path} exists and is not a socket`);
  unlinkSync(path);
}
