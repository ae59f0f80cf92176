/**
 * Relay workers (issue 13, `turn.workers > 1`): one supervisor process holds the TURN
 * listener sockets and runs N worker processes, each serving the same listen addresses
 * through its own SO_REUSEPORT socket (native/reuseport.c) with its own share of
 * turn.relay_ports. What each worker runs is decided by src/cli/relay-worker.ts; this file
 * knows only sockets, processes and port ranges.
 *
 * Affinity (socket(7) SO_REUSEPORT): the kernel delivers a datagram to one socket of the
 * reuseport group by a hash of its 4-tuple over the group's sockets, and a TCP connection
 * to one listening socket the same way. A client's packets keep reaching the same socket
 * while the group is unchanged. The supervisor makes all N sockets itself and keeps its
 * copies open for its whole life, handing socket i to worker i as an inherited descriptor
 * (child_process.fork stdio). A worker that dies therefore closes only its copy: the
 * socket stays in the group, the other workers' clients keep their 5-tuple -> socket
 * mapping, datagrams for the dead worker's socket wait in that socket's receive buffer
 * (dropped once it is full, as any UDP socket's), and the supervisor restarts the worker
 * on the very same descriptor. (Were the sockets the workers' own, a death would remove
 * one from the group and the kernel would rehash every client over the remaining ones.)
 * The restarted worker has lost its allocations: its clients get 437 Allocation Mismatch
 * (RFC 8656 §7.2) or silence and allocate again, landing on it again.
 */
import { fork, type ChildProcess, type ForkOptions } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { createServer, isIPv6 } from 'node:net';
import { join } from 'node:path';
import { parseListen, type GatehouseConfig } from '../config/config.js';
import type { Logger } from '../util/log.js';
import type { ReusePortAddon } from '../util/reuseport.js';
import { WorkerExchange, type ExchangeRequest, type WorkerCommand } from './worker-exchange.js';

/**
 * Worker i's contiguous share of [lo, hi] among n workers: the sizes differ by at most one
 * and the shares neither overlap nor leave a gap, so no two workers can pick one relay port.
 */
export function relayPortShare(range: readonly number[], n: number, i: number): [number, number] {
  const lo = range[0]!;
  const hi = range[1]!;
  const total = hi - lo + 1;
  if (n < 1 || i < 0 || i >= n || total < n) throw new RangeError(`no relay port share ${i} of ${n} in [${lo}, ${hi}]`);
  const base = Math.floor(total / n);
  const extra = total % n;
  const start = lo + i * base + Math.min(i, extra);
  return [start, start + base + (i < extra ? 1 : 0) - 1];
}

/**
 * The state directory of worker i: DATA_DIR itself for worker 0, DATA_DIR/workers/<i> for
 * the others; with `own` (workers that dropped to turn.worker_user) every worker's,
 * worker 0's too, so DATA_DIR and the supervisor's files in it stay the supervisor's.
 */
export function workerDataDir(dataDir: string, i: number, own = false): string {
  return i === 0 && !own ? dataDir : join(dataDir, 'workers', String(i));
}

/** The cluster node id of worker i (store.node_id's 64-character bound kept). */
export function workerNodeId(base: string, i: number): string {
  const suffix = `.w${i}`;
  return base.slice(0, 64 - suffix.length) + suffix;
}

/** A worker's view of the configuration: its ports, its state directory, its node id. */
export function workerConfig(
  cfg: GatehouseConfig,
  i: number,
  opts: {
    listen: string[];
    nodeBase: string;
    shared: {
      rest_secret: string;
      users: GatehouseConfig['users'];
      identity: GatehouseConfig['identity'];
      /** The core's signing key files, settled by the supervisor (worker 0 runs the core). */
      core_signing?: GatehouseConfig['core']['signing'];
      /** The admin token, settled by the supervisor when worker 0 does not keep DATA_DIR. */
      admin_token?: string;
    };
    /** Every worker in DATA_DIR/workers/<i> (workerDataDir `own`). */
    ownDirs?: boolean;
  },
): GatehouseConfig {
  const [lo, hi] = relayPortShare(cfg.turn.relay_ports, cfg.turn.workers, i);
  const { core_signing, admin_token } = opts.shared;
  return {
    ...cfg,
    data_dir: workerDataDir(cfg.data_dir, i, opts.ownDirs),
    ...(core_signing ? { core: { ...cfg.core, signing: core_signing } } : {}),
    ...(admin_token !== undefined ? { admin: { ...cfg.admin, token: admin_token } } : {}),
    turn: { ...cfg.turn, listen: opts.listen, relay_ports: [lo, hi], rest_secret: opts.shared.rest_secret },
    users: opts.shared.users,
    identity: opts.shared.identity,
    store: { ...cfg.store, node_id: workerNodeId(opts.nodeBase, i) },
  };
}

/**
 * socket(7): any socket of the same effective UID that sets SO_REUSEPORT joins a group
 * already bound there, and would silently take a share of the clients (another gatehouse
 * still running, say). So before making the group, the port is bound once without the
 * option (dgram and net do not set it on Node 20): EADDRINUSE if anything holds it.
 */
async function portIsFree(kind: 'udp' | 'tcp', host: string, port: number, url: string): Promise<void> {
  const inUse = (err: NodeJS.ErrnoException) =>
    Object.assign(new Error(`${url}: ${err.code === 'EADDRINUSE' ? 'address already in use' : err.message}`), { code: err.code });
  if (kind === 'udp') {
    const s = createSocket({ type: isIPv6(host) ? 'udp6' : 'udp4' });
    await new Promise<void>((res, rej) => {
      s.once('error', (e) => rej(inUse(e)));
      s.bind({ port, address: host, exclusive: true }, () => res());
    }).finally(() => {
      try {
        s.close();
      } catch {
        /* never bound */
      }
    });
  } else {
    const srv = createServer();
    await new Promise<void>((res, rej) => {
      srv.once('error', (e) => rej(inUse(e)));
      srv.listen({ port, host, exclusive: true }, () => res());
    });
    await new Promise((r) => srv.close(r));
  }
}

/** What the supervisor sends a new worker over IPC (its one message). */
export interface WorkerStart {
  type: 'start';
  index: number;
  config: GatehouseConfig;
  /** turn.listen URL -> the descriptor number the socket has in the worker. */
  fds: [string, number][];
  /** Where and how the worker gets its private keys (null: it reads none). */
  keys: WorkerKeys | null;
  /** Worker 0 (the dashboard): every worker's recordings directory, in worker order. */
  recordingsDirs?: string[];
}

/**
 * The worker's part in the key broker (src/util/key-broker.ts): it drops to `account`
 * (when given) before anything else, then asks the broker on `socket` for each named key
 * and serves with them in memory, under the path the configuration names for that file.
 */
export interface WorkerKeys {
  socket: string;
  account: { uid: number; gid: number } | null;
  /** [broker key name, configured file path]. */
  files: [string, string][];
}

/**
 * How worker i's process is started: fork() by default, or the key broker's spawnWorker
 * (which records it, with the key names `keys` lets it have).
 */
export type SpawnWorker = (path: string, args: string[], opts: ForkOptions, keys: WorkerKeys) => ChildProcess;

/**
 * What a worker says: `hello` once it listens for its start message (a message sent
 * before the child has a 'message' listener would be emitted to no one), then `ready` or
 * `failed`.
 */
export type WorkerReply = { type: 'hello' } | { type: 'ready' } | { type: 'failed'; error: string } | ExchangeRequest;
export type { WorkerCommand };

/** Descriptor numbers 0-2 are stdio and 3 the IPC channel: inherited sockets start at 4. */
const FIRST_INHERITED_FD = 4;

interface Slot {
  index: number;
  /** This worker's socket of each listen URL (the supervisor's copies, never closed while running). */
  fds: number[];
  child: ChildProcess | null;
  pid: number | null;
  restarts: number;
  startedAt: number;
  /** It said ready and has not exited since. */
  serving: boolean;
  /** Restart delay after a short life; doubled up to MAX_RESTART_DELAY_MS. */
  delayMs: number;
  timer: NodeJS.Timeout | null;
}

const MIN_RESTART_DELAY_MS = 100;
const MAX_RESTART_DELAY_MS = 10_000;
/** A worker that lived this long restarts after the shortest delay again. */
const STABLE_MS = 10_000;
const READY_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 10_000;

export interface RelaySupervisorOptions {
  cfg: GatehouseConfig;
  addon: ReusePortAddon;
  log: Logger;
  /** The script forked for each worker (bin/gatehouse.js) and its arguments (relay-worker). */
  command: { path: string; args: string[] };
  /** Worker i's configuration, given the listen URLs with their bound ports. */
  configFor(i: number, listen: string[]): GatehouseConfig;
  /** The key broker's spawn and what workers ask it for; without it workers are forked and read no keys. */
  keys?: { spawn: SpawnWorker; worker(i: number): WorkerKeys };
  /** How long a new worker has to say ready before it is killed. Default READY_TIMEOUT_MS. */
  readyTimeoutMs?: number;
  /** The workers' metrics parts (in worker order) and the restart count, as exposition text (src/admin/worker-metrics.ts). */
  aggregateMetrics?: (parts: unknown[], restarts: number) => Promise<string>;
}

export class RelaySupervisor {
  private readonly n: number;
  private slots: Slot[] = [];
  private listen: string[] = [];
  private stopping = false;
  private readonly exchange: WorkerExchange;

  constructor(private readonly o: RelaySupervisorOptions) {
    this.n = o.cfg.turn.workers;
    this.exchange = new WorkerExchange({
      log: o.log,
      serving: () => this.slots.flatMap((s) => (s.serving && s.child?.connected ? [{ index: s.index, child: s.child }] : [])),
      restarts: () => this.restarts(),
      ...(o.aggregateMetrics ? { aggregateMetrics: o.aggregateMetrics } : {}),
    });
  }

  /**
   * Makes the N sockets of every turn.listen address (a port 0 is bound by the first and
   * the others join it), forks the workers and waits until each serves. Any failure stops
   * what was started and throws.
   */
  async start(): Promise<void> {
    try {
      this.slots = Array.from({ length: this.n }, (_, index) => ({
        index,
        fds: [],
        child: null,
        pid: null,
        restarts: 0,
        serving: false,
        startedAt: 0,
        delayMs: MIN_RESTART_DELAY_MS,
        timer: null,
      }));
      for (const url of this.o.cfg.turn.listen) {
        const { proto, host, port } = parseListen(url);
        const family = isIPv6(host) ? 6 : 4;
        const kind = proto === 'udp' ? 'udp' : 'tcp'; // tls:// is TLS over a TCP listener
        if (port !== 0) await portIsFree(kind, host, port, url);
        let bound = port;
        for (const slot of this.slots) {
          const s = this.o.addon.reuseportSocket(kind, family, host, bound);
          bound = s.port;
          slot.fds.push(s.fd);
        }
        this.listen.push(port === bound ? url : `${proto}://${family === 6 ? `[${host}]` : host}:${bound}`);
      }
      await Promise.all(this.slots.map((s) => this.spawn(s)));
    } catch (err) {
      await this.stop();
      throw err;
    }
    this.o.log.info({ workers: this.workers(), listen: this.listen }, 'relay workers listening');
  }

  /** The listen URLs with their bound ports. */
  addresses(): string[] {
    return [...this.listen];
  }

  workers(): { worker: number; pid: number | null; restarts: number; fds: number[] }[] {
    return this.slots.map((s) => ({ worker: s.index, pid: s.pid, restarts: s.restarts, fds: [...s.fds] }));
  }

  private spawn(slot: Slot): Promise<void> {
    const cfg = this.o.configFor(slot.index, this.listen);
    // child_process stdio: an integer is a descriptor of this process shared with the
    // child at that position (libuv dup2s it, which clears close-on-exec on the copy only).
    const opts: ForkOptions = { stdio: ['inherit', 'inherit', 'inherit', 'ipc', ...slot.fds], serialization: 'json' };
    const keys = this.o.keys ? this.o.keys.worker(slot.index) : null;
    const child =
      this.o.keys && keys
        ? this.o.keys.spawn(this.o.command.path, this.o.command.args, opts, keys)
        : fork(this.o.command.path, this.o.command.args, opts);
    slot.child = child;
    slot.pid = child.pid ?? null;
    slot.startedAt = Date.now();
    const start: WorkerStart = {
      type: 'start',
      index: slot.index,
      config: cfg,
      fds: this.listen.map((url, k) => [url, FIRST_INHERITED_FD + k]),
      keys,
      ...(slot.index === 0
        ? { recordingsDirs: this.slots.map((s) => join(this.o.configFor(s.index, this.listen).data_dir, 'recordings')) }
        : {}),
    };
    const hello = (m: WorkerReply) => {
      if (m?.type !== 'hello') return;
      child.off('message', hello);
      child.send(start);
    };
    child.on('message', hello);
    // A send to a worker that already died reports here, not as an uncaught 'error'.
    child.on('error', (err) => this.o.log.warn({ worker: slot.index, pid: slot.pid, err: err.message }, 'relay worker channel error'));
    const ready = new Promise<void>((resolve, reject) => {
      // A worker that neither serves nor exits in time is killed: its exit then restarts it
      // (or, at the first start, start() fails and stops the rest).
      const readyMs = this.o.readyTimeoutMs ?? READY_TIMEOUT_MS;
      const timer = setTimeout(() => {
        done(new Error(`relay worker ${slot.index} not ready after ${readyMs} ms; killed`));
        child.kill('SIGKILL');
      }, readyMs);
      const done = (err?: Error) => {
        clearTimeout(timer);
        child.off('message', onMessage);
        child.off('exit', onEarlyExit);
        if (err) reject(err);
        else resolve();
      };
      const onMessage = (m: WorkerReply) => {
        if (m?.type === 'ready') done();
        else if (m?.type === 'failed') done(new Error(`relay worker ${slot.index}: ${m.error}`));
      };
      const onEarlyExit = (code: number | null, signal: string | null) =>
        done(new Error(`relay worker ${slot.index} exited before serving (${signal ?? `code ${code}`})`));
      child.on('message', onMessage);
      child.once('exit', onEarlyExit);
    });
    // Once it serves, what it asks of its siblings (metrics, reservations) goes to the
    // exchange; a message that makes it throw is dropped and logged, never the supervisor.
    child.on('message', (m: WorkerReply, handle: unknown) => {
      try {
        this.exchange.onMessage({ index: slot.index, child }, slot.child === child && slot.serving, m, handle);
      } catch (err) {
        this.o.log.warn({ worker: slot.index, err: (err as Error).message }, 'relay worker message not handled');
      }
    });
    child.once('exit', (code, signal) => this.onExit(slot, child, code, signal));
    return ready.then(() => {
      if (slot.child === child) slot.serving = true;
      this.o.log.info({ worker: slot.index, pid: slot.pid, restarts: slot.restarts, fds: slot.fds }, 'relay worker serving');
    });
  }

  /** Workers restarted after they died, over the supervisor's life. */
  restarts(): number {
    return this.slots.reduce((n, s) => n + s.restarts, 0);
  }

  private onExit(slot: Slot, child: ChildProcess, code: number | null, signal: string | null): void {
    if (slot.child !== child) return;
    slot.child = null;
    slot.serving = false;
    if (this.stopping) return;
    const lived = Date.now() - slot.startedAt;
    slot.delayMs = lived >= STABLE_MS ? MIN_RESTART_DELAY_MS : Math.min(MAX_RESTART_DELAY_MS, slot.delayMs * 2);
    this.o.log.warn(
      { worker: slot.index, pid: slot.pid, code, signal, lived_ms: lived, restart_in_ms: slot.delayMs, fds: slot.fds },
      'relay worker died; restarting it on the same sockets',
    );
    slot.timer = setTimeout(() => {
      slot.timer = null;
      if (this.stopping) return;
      slot.restarts++;
      this.spawn(slot).catch((err: Error) => this.o.log.error({ worker: slot.index, err: err.message }, 'relay worker restart failed'));
    }, slot.delayMs);
  }

  /** SIGTERM to every worker (SIGKILL after STOP_TIMEOUT_MS), then the sockets are closed. */
  async stop(): Promise<void> {
    this.stopping = true;
    await Promise.all(
      this.slots.map(async (s) => {
        if (s.timer) clearTimeout(s.timer);
        const c = s.child;
        if (!c || c.exitCode !== null || c.signalCode !== null) return;
        const exited = new Promise<void>((r) => c.once('exit', () => r()));
        c.kill('SIGTERM');
        const t = setTimeout(() => c.kill('SIGKILL'), STOP_TIMEOUT_MS);
        await exited;
        clearTimeout(t);
      }),
    );
    for (const s of this.slots) {
      for (const fd of s.fds) {
        try {
          this.o.addon.closeFd(fd);
        } catch {
          /* already closed */
        }
      }
      s.fds = [];
    }
  }
}
