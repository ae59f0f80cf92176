import type { Writable } from 'node:stream';
import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { loadConfig } from '../config/config.js';
import { ConfigError } from '../util/errors.js';
import { redactRedisUrl } from '../events/redis.js';
import { checkUserName, deleteUser, listUsers, putUser } from '../cluster/users.js';

export const USER_HELP = `Usage: gatehouse user add NAME [--groups G1,G2] [--password-stdin] --config FILE
       gatehouse user remove NAME --config FILE
       gatehouse user list --config FILE

TURN users shared by every gateway of a cluster (store.redis in FILE; README "Cluster").
add: the password is read from standard input with --password-stdin, otherwise one is
generated and printed once. Redis keeps only the RFC 8489 long-term keys (MD5, SHA-256)
for the configuration's realm, never the password: every gateway needs that realm. Users of the configuration's "users:" list are managed in the
file; these commands need store.redis.
`;

async function readStdin(stdin: NodeJS.ReadableStream): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of stdin) chunks.push(Buffer.from(c as Buffer));
  return Buffer.concat(chunks)
    .toString('utf8')
    .replace(/\r?\n$/, '');
}

export async function runUser(argv: string[], io: { stdout: Writable; stderr: Writable; stdin?: NodeJS.ReadableStream }): Promise<number> {
  if (argv.includes('--help') || argv[0] === 'help') {
    io.stdout.write(USER_HELP);
    return 0;
  }
  const [sub, ...rest] = argv;
  let config: string | null = null;
  let groups: string[] = [];
  let passwordStdin = false;
  const pos: string[] = [];
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i]!;
    if (a === '--config') config = rest[++i] ?? null;
    else if (a === '--groups')
      groups = (rest[++i] ?? '')
        .split(',')
        .map((g) => g.trim())
        .filter(Boolean);
    else if (a === '--password-stdin') passwordStdin = true;
    else if (a.startsWith('--')) {
      io.stderr.write(`gatehouse user: unknown option ${a}\n\n${USER_HELP}`);
      return 2;
    } else pos.push(a);
  }
  const needsName = sub === 'add' || sub === 'remove';
  if (!sub || !['add', 'remove', 'list'].includes(sub) || (needsName && pos.length !== 1) || (!needsName && pos.length)) {
    io.stderr.write(USER_HELP);
    return 2;
  }
  let cfg;
  try {
    cfg = loadConfig(config);
  } catch (err) {
    io.stderr.write(`${err instanceof ConfigError ? err.message : (err as Error).message}\n`);
    return 1;
  }
  if (!cfg.store.redis) {
    io.stderr.write(
      `gatehouse user: store.redis is not set${config ? ` in ${config}` : ''}: users are the "users:" list of the configuration\n`,
    );
    return 1;
  }
  const name = pos[0] ?? '';
  if (needsName) {
    const bad = checkUserName(name);
    if (bad) {
      io.stderr.write(`gatehouse user: ${bad}\n`);
      return 2;
    }
  }
  const redis = new Redis(cfg.store.redis, { lazyConnect: true, maxRetriesPerRequest: 1, retryStrategy: () => null, connectTimeout: 3000 });
  redis.on('error', () => {});
  try {
    await redis.connect();
    const prefix = cfg.store.key_prefix;
    if (sub === 'add') {
      let password: string;
      let generated = false;
      if (passwordStdin) password = await readStdin(io.stdin ?? process.stdin);
      else {
        password = randomBytes(18).toString('base64url');
        generated = true;
      }
      if (!password) {
        io.stderr.write('gatehouse user: empty password\n');
        return 1;
      }
      // RFC 8489 §9.2.2: only the long-term keys for this realm are stored, never the password.
      await putUser(redis, prefix, { name, password, groups, realm: cfg.realm });
      const what = `user ${name} added (realm ${JSON.stringify(cfg.realm)})`;
      io.stdout.write(generated ? `${what}; password (shown once): ${password}\n` : `${what}\n`);
    } else if (sub === 'remove') {
      const had = await deleteUser(redis, prefix, name);
      io.stdout.write(had ? `user ${name} removed\n` : `no cluster user ${name}\n`);
      if (!had) return 1;
    } else {
      const why = { other_realm: 'another realm', clear_password: 'old form with the password: add it again', malformed: 'malformed' };
      for (const u of await listUsers(redis, prefix, cfg.realm))
        io.stdout.write(
          `${u.name}\t${u.groups.join(',')}${u.refused ? `\trefused by gateways of realm ${JSON.stringify(cfg.realm)}: ${why[u.refused]}` : ''}\n`,
        );
    }
    return 0;
  } catch (err) {
    io.stderr.write(`gatehouse user: redis ${redactRedisUrl(cfg.store.redis)}: ${(err as Error).message}\n`);
    return 1;
  } finally {
    redis.disconnect();
  }
}
