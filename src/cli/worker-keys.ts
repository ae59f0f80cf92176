/**
 * The supervisor's side of "workers get keys only after they prove who they are" (issue
 * 13): which private key files the workers need, read here once and held by the key
 * broker (src/util/key-broker.ts), and the state directories of workers that drop to
 * turn.worker_user. Workers ask the broker for the keys by name after their drop
 * (src/cli/relay-worker.ts); they never open the files.
 */
import { chmodSync, chownSync, lstatSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { GatehouseConfig } from '../config/config.js';
import type { Account } from '../util/drop-privileges.js';
import { KeyBroker } from '../util/key-broker.js';
import type { Logger } from '../util/log.js';
import type { SpawnWorker, WorkerKeys } from '../turn/workers.js';

/** The keys a relay-only worker (1..N-1) may have: worker 0 alone serves admin, core and PCP. */
const RELAY_KEYS = new Set(['identity', 'turn-tls']);

/**
 * Reads the key files once into a key broker (socket DATA_DIR/key-broker/keys.sock, in the
 * workers' group when they drop to `account`) and gives the supervisor its spawn (fork()
 * is spawn of this Node with its execArgv and an IPC channel; through the broker, which
 * records each worker's pid, uid and start time and the key names it may have: a restarted
 * worker is a new record) and what each worker asks for.
 */
export async function startWorkerKeys(
  cfg: GatehouseConfig,
  log: Logger,
  o: { account: Account | null; uid: number; files: [string, string][] },
): Promise<{ broker: KeyBroker; spawn: SpawnWorker; worker(i: number): WorkerKeys }> {
  const broker = await KeyBroker.start({
    dir: join(resolve(cfg.data_dir), 'key-broker'),
    keys: new Map(o.files.map(([name, path]) => [name, readFileSync(path)])),
    log,
    ...(o.account ? { socketGroup: o.account.gid } : {}),
  });
  return {
    broker,
    spawn: (path, args, opts, keys) =>
      broker.spawnWorker(process.execPath, [...process.execArgv, path, ...args], {
        ...opts,
        workerUid: o.uid,
        keyNames: keys.files.map(([name]) => name),
      }),
    worker: (i) => ({
      socket: broker.socketPath,
      account: o.account,
      files: i === 0 ? o.files : o.files.filter(([name]) => RELAY_KEYS.has(name)),
    }),
  };
}

/**
 * [broker key name, file path] of every private key a worker may load: the gateway
 * identity (key-escrow.md §1), and the TLS keys of turn.tls, admin.tls and core.tls, and
 * the core's signing key (core.md §6), where configured.
 */
export function workerKeyFiles(cfg: GatehouseConfig, identityKey: string, coreSigningKey: string | null): [string, string][] {
  const files: [string, string][] = [['identity', identityKey]];
  if (cfg.turn.tls.key) files.push(['turn-tls', cfg.turn.tls.key]);
  if (cfg.admin.tls.key) files.push(['admin-tls', cfg.admin.tls.key]);
  if (cfg.core.tls.key) files.push(['core-tls', cfg.core.tls.key]);
  if (coreSigningKey) files.push(['core-signing', coreSigningKey]);
  return files.map(([name, path]) => [name, resolve(path)]);
}

/** Entries walked when a worker directory is handed to the worker account (a bound, not a limit anyone meets). */
const MAX_CHOWN_ENTRIES = 100_000;

/**
 * DATA_DIR for workers that run as `account`: DATA_DIR and DATA_DIR/workers stay the
 * supervisor's and become 0711 (a worker can pass through to its own directory but list
 * or read nothing of the supervisor's: gateway.key, admin-token, initial-user.json are
 * 0600), and each DATA_DIR/workers/<i> is 0700 and the worker's, with what an earlier
 * run left in it.
 */
export function prepareWorkerDirs(dataDir: string, dirs: string[], account: Account): void {
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  chmodSync(dataDir, 0o711);
  const parent = join(dataDir, 'workers');
  mkdirSync(parent, { recursive: true, mode: 0o711 });
  chmodSync(parent, 0o711);
  for (const dir of dirs) {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    chmodSync(dir, 0o700);
    let left = MAX_CHOWN_ENTRIES;
    const own = (path: string): void => {
      if (--left < 0) throw new Error(`${dir}: more than ${MAX_CHOWN_ENTRIES} entries to hand to turn.worker_user`);
      const st = lstatSync(path);
      if (st.isSymbolicLink()) return; // never follow a link out of the worker's directory
      chownSync(path, account.uid, account.gid);
      if (st.isDirectory()) for (const e of readdirSync(path)) own(join(path, e));
    };
    own(dir);
  }
}
