import { parseArgs } from 'node:util';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Writable } from 'node:stream';
import { loadConfig, parseCoreListen, type GatehouseConfig } from '../config/config.js';
import { ConfigError } from '../util/errors.js';
import { createLogger } from '../util/log.js';
import { systemClock } from '../util/clock.js';
import { FrontEnd } from '../core/fe/frontend.js';
import { FeHttpServer } from '../core/fe/server.js';
import { loadOrCreatePoolSecret } from '../core/conferences.js';

export const CORE_FE_HELP = `Usage: gatehouse core-fe --config FILE

Runs one front end (FE) of a conferencing core pool (core.md §1): it owns the
conferences created through it, its RSA key pair and its store, and answers only the
director's requests signed with the pool secret.

An FE's configuration is a Gatehouse configuration file where
  core.listen       is the FE's own address: http://127.0.0.1:PORT (loopback), or
                    https://ADDRESS:PORT with core.tls (cert, key)
  core.pool_secret  is the secret shared with the director (at least 32 characters;
                    null: the one in DATA_DIR/core-pool-secret, made on first use)
  data_dir          keeps the FE's key pair, key-encryption key and store (DATA_DIR/core-fe)
The director lists the FE's URL in its own core.pool.

Options:
  --config FILE   YAML configuration (required).
  --help          This text.
`;

export async function runCoreFe(argv: string[], io: { stdout: Writable; stderr: Writable }): Promise<number> {
  let args;
  try {
    args = parseArgs({ args: argv, options: { config: { type: 'string' }, help: { type: 'boolean' } }, strict: true });
  } catch (err) {
    io.stderr.write(`gatehouse core-fe: ${(err as Error).message}\n\n${CORE_FE_HELP}`);
    return 2;
  }
  if (args.values.help) {
    io.stdout.write(CORE_FE_HELP);
    return 0;
  }
  if (!args.values.config) {
    io.stderr.write(`gatehouse core-fe: --config FILE is required\n\n${CORE_FE_HELP}`);
    return 2;
  }
  let cfg: GatehouseConfig;
  let listen: { scheme: 'http' | 'https'; host: string; port: number };
  let tls: { cert: Buffer; key: Buffer } | undefined;
  try {
    cfg = loadConfig(args.values.config);
    listen = parseCoreListen(cfg.core.listen);
    const loopback = /^(127\.|::1$|localhost$)/.test(listen.host);
    if (listen.scheme === 'https') {
      if (!cfg.core.tls.cert || !cfg.core.tls.key) throw new Error('core.listen is https://: core.tls.cert and core.tls.key are required');
      tls = { cert: readFileSync(cfg.core.tls.cert), key: readFileSync(cfg.core.tls.key) };
    } else if (!loopback) {
      throw new Error('core.listen: plain http:// only on loopback; use https:// with core.tls');
    }
  } catch (err) {
    const msg = err instanceof ConfigError ? err.message : (err as Error).message;
    io.stderr.write(`gatehouse core-fe: configuration error: ${msg}\n`);
    return 2;
  }
  const log = createLogger({ level: cfg.log_level, name: 'gatehouse-core-fe' });
  let fe: FrontEnd;
  let server: FeHttpServer;
  try {
    const secret = loadOrCreatePoolSecret(cfg.data_dir, cfg.core.pool_secret);
    fe = new FrontEnd(join(cfg.data_dir, 'core-fe'), systemClock);
    server = new FeHttpServer(fe, secret, log);
    const addr = await server.listen(listen.port, listen.host, tls);
    const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
    // The fingerprint names the public key only; no secret is printed.
    io.stdout.write(
      `gatehouse core-fe: listening on ${listen.scheme}://${host}:${addr.port} (key sha256 ${fe.keys.fingerprint.slice(0, 16)}…)\n`,
    );
    log.info({ listen: `${listen.scheme}://${host}:${addr.port}` }, 'core-fe started');
  } catch (err) {
    io.stderr.write(`gatehouse core-fe: cannot start: ${(err as Error).message}\n`);
    return 1;
  }
  await new Promise<void>((resolve) => {
    const stop = (sig: string) => {
      log.info({ signal: sig }, 'stopping');
      server
        .close()
        .catch(() => {})
        .finally(() => {
          fe.close();
          resolve();
        });
    };
    process.once('SIGINT', () => stop('SIGINT'));
    process.once('SIGTERM', () => stop('SIGTERM'));
  });
  return 0;
}
