import { parseArgs } from 'node:util';
import type { Writable } from 'node:stream';
import { loadConfig, type GatehouseConfig } from '../config/config.js';
import { ConfigError } from '../util/errors.js';
import { createLogger } from '../util/log.js';
import { startGateway, type RunningGateway } from '../gateway/gateway.js';
import type { Supervisor } from '../util/supervise.js';
import type { Logger } from '../util/log.js';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { mkdirSync } from 'node:fs';
import { requireReusePort } from '../util/reuseport.js';
import { RelaySupervisor, workerConfig, workerDataDir } from '../turn/workers.js';
import type { KeyBroker } from '../util/key-broker.js';
import { lookupAccount } from '../util/drop-privileges.js';
import { loadOrCreateAdminToken } from '../admin/token.js';
import { loadOrCreateCoreSigning, SIGNING_CERT_FILE, SIGNING_KEY_FILE } from '../core/core-signing.js';
import { prepareWorkerDirs, startWorkerKeys, workerKeyFiles } from './worker-keys.js';
import { aggregateWorkerMetrics, type WorkerMetricsPart } from '../admin/worker-metrics.js';
import { loadOrCreateRestSecret } from '../core/turn-credentials.js';
import { clusterRestSecret } from '../cluster/rest-secret.js';
import { clusterNodeId } from '../cluster/node.js';
import { ensureBootstrapUser } from '../store/users.js';
import { loadOrCreateIdentity } from '../store/identity.js';

export { startGateway, type RunningGateway };

export const SERVE_HELP = `Usage: gatehouse serve [--config FILE]

Runs the gateway: the TURN server (and later PCP), inspection, policy and the admin API.
With no --config the embedded default is used: TURN on udp/tcp 0.0.0.0:3478, state in
./data, admin API on http://127.0.0.1:8080. On a first start with no users configured,
one user is created with a random password, kept in DATA_DIR/initial-user.json and
printed once.

Options:
  --config FILE   YAML configuration (see README "Configuration"); every key optional.
                  A key that is unknown or of the wrong type stops the start with the
                  file, line, column and key named.
  --help          This text.
`;

export async function runServe(argv: string[], io: { stdout: Writable; stderr: Writable; supervisor?: Supervisor }): Promise<number> {
  let args;
  try {
    args = parseArgs({ args: argv, options: { config: { type: 'string' }, help: { type: 'boolean' } }, strict: true });
  } catch (err) {
    io.stderr.write(`gatehouse serve: ${(err as Error).message}\n\n${SERVE_HELP}`);
    return 2;
  }
  if (args.values.help) {
    io.stdout.write(SERVE_HELP);
    return 0;
  }
  let cfg: GatehouseConfig;
  try {
    cfg = loadConfig(args.values.config ?? null);
  } catch (err) {
    const msg = err instanceof ConfigError ? err.message : (err as Error).message;
    io.stderr.write(`gatehouse serve: configuration error: ${msg}\n`);
    return 2;
  }
  const log = createLogger({ level: cfg.log_level });
  // Issue 13: turn.workers > 1 makes this process the supervisor of relay workers (README "Relay workers").
  if (cfg.turn.workers > 1) return runWorkers(cfg, log, io);
  let gw: RunningGateway;
  try {
    gw = await startGateway(cfg, log, io.stdout, { supervisor: io.supervisor }); // main.ts's process-level Supervisor
  } catch (err) {
    io.stderr.write(`gatehouse serve: cannot start: ${(err as Error).message}\n`);
    return 1;
  }
  return untilSignal(log, 'stopping', () => gw.stop());
}

/** Runs until SIGINT or SIGTERM, then `stop()`; 0 once it has finished. */
async function untilSignal(log: Logger, what: string, stop: () => Promise<void>): Promise<number> {
  await new Promise<void>((resolve) => {
    const onSignal = (sig: string) => {
      log.info({ signal: sig }, what);
      stop().finally(resolve);
    };
    process.once('SIGINT', () => onSignal('SIGINT'));
    process.once('SIGTERM', () => onSignal('SIGTERM'));
  });
  log.flush();
  return 0;
}

/**
 * turn.workers > 1: this process holds the SO_REUSEPORT listener sockets and runs the
 * workers (src/turn/workers.ts). What every worker must agree on is settled here once,
 * before any starts: the REST secret, the bootstrap user, the gateway identity (made in
 * DATA_DIR; every worker escrows keys to the same certificate), the core's signing key.
 * This process alone reads the private keys: it hands them to its key broker, and a
 * worker gets them from there after it dropped to turn.worker_user (src/cli/worker-keys.ts).
 */
async function runWorkers(cfg: GatehouseConfig, log: Logger, io: { stdout: Writable; stderr: Writable }): Promise<number> {
  let sup: RelaySupervisor;
  let broker: KeyBroker | null = null;
  try {
    const addon = requireReusePort();
    const account = cfg.turn.worker_user === null ? null : lookupAccount(cfg.turn.worker_user);
    const euid = process.geteuid!();
    if (account && euid !== 0)
      throw new Error(`turn.worker_user: workers drop to "${cfg.turn.worker_user}" only when serve starts as root`);
    if (!account && euid === 0)
      log.warn('relay workers run as root: set turn.worker_user to have them drop to an unprivileged account after binding');
    mkdirSync(cfg.data_dir, { recursive: true, mode: 0o700 });
    const rest = loadOrCreateRestSecret(cfg.data_dir, cfg.turn.rest_secret);
    const restSecret =
      cfg.turn.rest_secret ??
      (cfg.store.redis
        ? await clusterRestSecret(cfg.store.redis, cfg.store.key_prefix, rest.secret, log.child({ module: 'cluster' }))
        : rest.secret);
    const boot = ensureBootstrapUser(cfg.data_dir, cfg.users);
    if (boot.created)
      io.stdout.write(
        `\nFirst start: created TURN user "${boot.created.name}" with password ${boot.created.password}\n` +
          `(kept in ${join(cfg.data_dir, 'initial-user.json')}; add users under "users:" in a config file)\n\n`,
      );
    await loadOrCreateIdentity(cfg.data_dir, cfg.identity, cfg.realm);
    const identity = cfg.identity.cert ? cfg.identity : { cert: join(cfg.data_dir, 'gateway.crt'), key: join(cfg.data_dir, 'gateway.key') };
    await loadOrCreateCoreSigning(cfg, cfg.data_dir);
    const coreSigning = cfg.core.signing.key
      ? cfg.core.signing
      : { cert: join(cfg.data_dir, SIGNING_CERT_FILE), key: join(cfg.data_dir, SIGNING_KEY_FILE) };
    const users = boot.users.map((u) => ({ name: u.name, password: u.password, groups: [...(u.groups ?? [])] }));
    const nodeBase = clusterNodeId(cfg);
    // Dropped workers keep their state in DATA_DIR/workers/<i>: DATA_DIR holds the
    // supervisor's secrets, so the admin token kept there is settled here for worker 0.
    const ownDirs = account !== null;
    const adminToken = ownDirs ? loadOrCreateAdminToken(cfg).token : undefined;
    if (account)
      prepareWorkerDirs(
        cfg.data_dir,
        Array.from({ length: cfg.turn.workers }, (_, i) => workerDataDir(cfg.data_dir, i, true)),
        account,
      );
    const keys = await startWorkerKeys(cfg, log.child({ module: 'key-broker' }), {
      account,
      uid: account?.uid ?? euid,
      files: workerKeyFiles(cfg, identity.key!, coreSigning.key),
    });
    broker = keys.broker;
    sup = new RelaySupervisor({
      cfg,
      addon,
      log: log.child({ module: 'workers' }),
      command: { path: workerEntry(), args: ['relay-worker'] },
      configFor: (i, listen) =>
        workerConfig(cfg, i, {
          listen,
          nodeBase,
          ownDirs,
          shared: {
            rest_secret: restSecret,
            users,
            identity,
            core_signing: coreSigning,
            ...(adminToken !== undefined ? { admin_token: adminToken } : {}),
          },
        }),
      aggregateMetrics: (parts, restarts) =>
        aggregateWorkerMetrics(
          parts.filter((p): p is WorkerMetricsPart => Array.isArray(p)),
          restarts,
        ),
      keys,
    });
    await sup.start();
  } catch (err) {
    await broker?.close();
    io.stderr.write(`gatehouse serve: cannot start: ${(err as Error).message}\n`);
    return 1;
  }
  const keyBroker = broker;
  return untilSignal(log, 'stopping relay workers', async () => {
    await sup.stop();
    await keyBroker.close();
  });
}

/**
 * The script a worker runs: the one this process was started with (bin/gatehouse.js, or
 * src/cli/main.ts under tsx; fork passes process.execArgv on), so supervisor and workers
 * run the same code; else bin/gatehouse.js, two folders up from src/cli/ and dist/cli/.
 */
function workerEntry(): string {
  const self = process.argv[1];
  if (self && /(?:cli[\\/]main\.[tj]s|bin[\\/]gatehouse(?:\.js)?)$/.test(self)) return self;
  return fileURLToPath(new URL('../../bin/gatehouse.js', import.meta.url));
}
