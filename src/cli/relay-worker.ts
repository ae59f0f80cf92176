/**
 * One relay worker (issue 13, turn.workers > 1): started by `gatehouse serve`'s supervisor
 * (src/turn/workers.ts) as `gatehouse relay-worker`, never by hand. It gets its
 * configuration and the descriptors of its SO_REUSEPORT listener sockets over the IPC
 * channel, and runs the gateway on them: worker 0 all of it, the others TURN and the
 * per-flow floor only (inspection, policy, quotas, recordings, events), each a node of the
 * cluster on store.redis so quotas, blocks and users hold on every worker. It ends when
 * it is told to (SIGTERM, SIGINT) or when the supervisor goes (the IPC channel closes).
 */
import type { Writable } from 'node:stream';
import type { GatehouseConfig } from '../config/config.js';
import { startGateway } from '../gateway/gateway.js';
import { createLogger } from '../util/log.js';
import type { Supervisor } from '../util/supervise.js';
import { dropPrivileges } from '../util/drop-privileges.js';
import { requestKey } from '../util/key-client.js';
import { provideKeyFiles } from '../util/key-files.js';
import type { WorkerCommand, WorkerKeys, WorkerReply, WorkerStart } from '../turn/workers.js';
import type { RunningGateway } from '../gateway/gateway.js';
import { workerReservations } from './worker-reservations.js';
import { workerViews } from './worker-views.js';

function isStart(m: unknown): m is WorkerStart {
  const s = m as Partial<WorkerStart> | null;
  return (
    !!s &&
    s.type === 'start' &&
    Number.isInteger(s.index) &&
    typeof s.config === 'object' &&
    s.config !== null &&
    Array.isArray(s.fds) &&
    s.fds.every((e) => Array.isArray(e) && typeof e[0] === 'string' && Number.isInteger(e[1])) &&
    (s.keys === null ||
      (typeof s.keys === 'object' &&
        typeof s.keys.socket === 'string' &&
        Array.isArray(s.keys.files) &&
        s.keys.files.every((f) => Array.isArray(f) && typeof f[0] === 'string' && typeof f[1] === 'string'))) &&
    (s.recordingsDirs === undefined || (Array.isArray(s.recordingsDirs) && s.recordingsDirs.every((d) => typeof d === 'string')))
  );
}

/**
 * Gives up root (when told to) and then gets the private keys from the supervisor's key
 * broker, in that order: the broker serves this process only under the uid it recorded
 * for it, which is the one after the drop. The sockets it serves on were bound by the
 * supervisor and came in as descriptors, so nothing here needs root any more.
 */
async function takeKeys(keys: WorkerKeys): Promise<void> {
  if (keys.account) dropPrivileges(keys.account);
  const got = new Map<string, Buffer>();
  for (const [name, path] of keys.files) got.set(path, await requestKey(keys.socket, name));
  provideKeyFiles(got);
}

export async function runRelayWorker(
  _argv: string[],
  io: { stdout: Writable; stderr: Writable; supervisor?: Supervisor },
): Promise<number> {
  const send = process.send?.bind(process);
  if (!send) {
    io.stderr.write('gatehouse relay-worker: started by `gatehouse serve` when turn.workers > 1, not by hand\n');
    return 2;
  }
  const reply = (m: WorkerReply) => void send(m);
  const start = await new Promise<WorkerStart | null>((resolve) => {
    process.once('message', (m) => resolve(isStart(m) ? m : null));
    process.once('disconnect', () => resolve(null));
    reply({ type: 'hello' }); // listening now: the supervisor sends the start message
  });
  if (!start) {
    io.stderr.write('gatehouse relay-worker: no start message from the supervisor\n');
    return 2;
  }
  const cfg: GatehouseConfig = start.config;
  const log = createLogger({ level: cfg.log_level }).child({ worker: start.index });
  let gw: RunningGateway | undefined;
  const views = workerViews({ index: start.index, reply, gateway: () => gw, log });
  // A reservation handed over travels as the message's handle (the bound relay socket).
  const reservations = workerReservations(
    (m, handle, done) => (handle ? process.send!(m, handle, {}, done) : reply(m)),
    () => gw?.turn,
  );
  // A message that makes a handler throw is dropped and logged; the worker serves on.
  process.on('message', (m: WorkerCommand, handle: unknown) => {
    try {
      views.onCommand(m);
      reservations.onCommand(m, handle);
    } catch (err) {
      log.warn(
        { err: (err as Error).message, type: (m as { type?: unknown } | null)?.type },
        'relay worker: supervisor message not handled',
      );
    }
  });
  try {
    if (start.keys) await takeKeys(start.keys);
    gw = await startGateway(cfg, log, io.stdout, {
      ...(io.supervisor ? { supervisor: io.supervisor } : {}),
      worker: {
        listenFds: new Map(start.fds),
        relayOnly: start.index > 0,
        ...(start.index === 0
          ? {
              metricsText: views.metrics,
              flowsView: views.flows,
              quotasView: views.quotas,
              ...(start.recordingsDirs ? { recordingsDirs: start.recordingsDirs } : {}),
            }
          : { eventTap: views.eventTap }),
        reservations: reservations.exchange,
      },
    });
  } catch (err) {
    reply({ type: 'failed', error: (err as Error).message });
    io.stderr.write(`gatehouse relay-worker ${start.index}: cannot start: ${(err as Error).message}\n`);
    return 1;
  }
  reply({ type: 'ready' });
  await new Promise<void>((resolve) => {
    let stopping = false;
    const stop = (why: string) => {
      if (stopping) return;
      stopping = true;
      log.info({ reason: why }, 'relay worker stopping');
      gw.stop().finally(resolve);
    };
    process.once('SIGINT', () => stop('SIGINT'));
    process.once('SIGTERM', () => stop('SIGTERM'));
    // The supervisor is gone (even by SIGKILL): a worker never outlives it.
    process.once('disconnect', () => stop('supervisor_gone'));
  });
  log.flush();
  process.disconnect?.();
  return 0;
}
