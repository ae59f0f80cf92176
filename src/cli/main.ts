import type { Writable } from 'node:stream';
import { Supervisor } from '../util/supervise.js';

export { Supervisor };

export const MAIN_HELP = `Usage: gatehouse <command> [options]

Commands:
  serve [--config FILE]                 run the gateway (TURN, inspection, admin API)
  inspect CAPTURE.pcap --keys KEYS      inspect a capture offline; events as JSON lines
  rules check PATH...                   validate rule files
  verify [--cert FILE] DIR              check recordings: hashes, hash chain, signatures
  endpoint --role offer|answer ...      a compliant endpoint (werift): place/answer a test
                                        call through the gateway, escrowing its keys
  keyagent --keylog FILE --turn URL ... desktop key agent: escrow a browser's DTLS secrets
                                        (NSS key log) to the trusted gateway
  core-fe --config FILE                 run one front end of a conferencing core pool
  login --cert FILE --key FILE --core URL
                                        log in to a core with a client certificate;
                                        prints the login JSON (token)
  user add|remove|list NAME --config FILE
                                        TURN users shared by a cluster (store.redis)
  help                                  this text

Run "gatehouse <command> --help" for a command's options.
`;

/** What a command gets: its output streams and, for `serve`, the process's Supervisor. */
export interface CommandIo {
  stdout: Writable;
  stderr: Writable;
  supervisor?: Supervisor;
}

type Runner = (argv: string[], io: CommandIo) => Promise<number>;

/**
 * The last line of defence for `gatehouse serve`: an exception that escaped every
 * supervision wrapper (a bug), or a promise rejection nobody handled, is logged and
 * counted (gatehouse_supervised_exceptions_total{where="process.uncaught_exception" |
 * "process.unhandled_rejection"}) and the appliance goes on serving: a full disk or one
 * bad flow must not take it down. Returns a function that removes the handlers.
 */
export function installProcessHandlers(sup: Supervisor, proc: NodeJS.EventEmitter = process): () => void {
  const onException = (err: unknown) => sup.caught('process.uncaught_exception', err);
  const onRejection = (reason: unknown) => sup.caught('process.unhandled_rejection', reason);
  proc.on('uncaughtException', onException);
  proc.on('unhandledRejection', onRejection);
  return () => {
    proc.off('uncaughtException', onException);
    proc.off('unhandledRejection', onRejection);
  };
}

const commands: Record<string, () => Promise<Runner>> = {
  serve: async () => (await import('./serve.js')).runServe,
  inspect: async () => (await import('./inspect.js')).runInspect,
  rules: async () => (await import('./rules.js')).runRules,
  verify: async () => (await import('./verify.js')).runVerify,
  endpoint: async () => (await import('./endpoint.js')).runEndpoint,
  keyagent: async () => (await import('./keyagent.js')).runKeyagent,
  'core-fe': async () => (await import('./core-fe.js')).runCoreFe,
  login: async () => (await import('./login.js')).runLogin,
  user: async () => (await import('./user.js')).runUser,
  // Not in the help: `gatehouse serve` forks it when turn.workers > 1 (src/turn/workers.ts).
  'relay-worker': async () => (await import('./relay-worker.js')).runRelayWorker,
};

export async function main(argv: string[], io: CommandIo = { stdout: process.stdout, stderr: process.stderr }): Promise<number> {
  const [cmd, ...rest] = argv;
  if (!cmd || cmd === 'help' || cmd === '--help' || cmd === '-h') {
    io.stdout.write(MAIN_HELP);
    return cmd ? 0 : 2;
  }
  const load = commands[cmd];
  if (!load) {
    io.stderr.write(`gatehouse: unknown command "${cmd}"\n\n${MAIN_HELP}`);
    return 2;
  }
  return (await load())(rest, io);
}

/** Commands that evaluate rules (src/policy/engine.ts). */
const POLICY_COMMANDS = new Set(['serve', 'relay-worker', 'inspect', 'rules']);

const isEntry = process.argv[1] && /(?:cli[\\/]main\.[tj]s|bin[\\/]gatehouse(?:\.js)?)$/.test(process.argv[1]);
if (isEntry) {
  // GATEHOUSE_NATIVE=0: run the pure-JS crypto paths even when the addon is built.
  if (/^(0|false|off)$/i.test(process.env.GATEHOUSE_NATIVE ?? '')) (await import('../wire/native.js')).disableNative();
  if (process.argv[2] !== undefined && POLICY_COMMANDS.has(process.argv[2])) {
    // Content rules' keyword scan in the addon when it is built (policy loads no addon itself).
    const [{ loadNative }, { useNativeScan }] = await Promise.all([import('../wire/native.js'), import('../policy/matcher.js')]);
    useNativeScan(loadNative()?.dfaScan);
  }
  // A reader that goes away (`gatehouse ... | head`) ends the output quietly.
  for (const s of [process.stdout, process.stderr]) {
    s.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'EPIPE') process.exit(process.exitCode ?? 0);
      throw err;
    });
  }
  const io: CommandIo = { stdout: process.stdout, stderr: process.stderr };
  if (process.argv[2] === 'serve' || process.argv[2] === 'relay-worker') {
    // One Supervisor for the process: the gateway uses it for its timers and sinks, and
    // whatever escapes them lands here instead of ending the process. Its lines are
    // errors, so they are written whatever the configured log_level.
    // The logger (pino) is loaded here only: one-shot commands start without it.
    const { createLogger } = await import('../util/log.js');
    io.supervisor = new Supervisor(createLogger({ level: 'error' }).child({ module: 'supervise' }));
    installProcessHandlers(io.supervisor);
  }
  main(process.argv.slice(2), io).then(
    (code) => {
      process.exitCode = code;
      // One-shot commands end when they are done, even if a library left a handle open
      // (werift's sockets and timers after close): stdout is flushed first. `serve` ends on
      // its signals instead.
      if (process.argv[2] !== 'serve') {
        const t = setTimeout(() => process.stdout.write('', () => process.exit(code)), 500);
        t.unref();
      }
    },
    (err: unknown) => {
      process.stderr.write(`gatehouse: ${(err as Error).stack ?? String(err)}\n`);
      process.exitCode = 1;
    },
  );
}
