import { parseArgs } from 'node:util';
import type { Writable } from 'node:stream';
import { loadConfig, type GatehouseConfig } from '../config/config.js';
import { ConfigError } from '../util/errors.js';
import { createLogger } from '../util/log.js';
import { startGateway, type RunningGateway } from '../gateway/gateway.js';
import type { Supervisor } from '../util/supervise.js';

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
  let gw: RunningGateway;
  try {
    gw = await startGateway(cfg, log, io.stdout, { supervisor: io.supervisor }); // main.ts's process-level Supervisor
  } catch (err) {
    io.stderr.write(`gatehouse serve: cannot start: ${(err as Error).message}\n`);
    return 1;
  }
  await new Promise<void>((resolve) => {
    const stop = (sig: string) => {
      log.info({ signal: sig }, 'stopping');
      gw.stop().finally(resolve);
    };
    process.once('SIGINT', () => stop('SIGINT'));
    process.once('SIGTERM', () => stop('SIGTERM'));
  });
  log.flush();
  return 0;
}
