import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync, chmodSync } from 'node:fs';
import { join } from 'node:path';
import type { UserEntry } from '../config/config.js';
import { GatehouseError } from '../util/errors.js';

/**
 * RFC 8489 §9.2.2 long-term keys computed ahead for one realm: MD5 and (PASSWORD-ALGORITHM
 * SHA-256, §18.5) SHA-256 of `username ":" OpaqueString(realm) ":" OpaqueString(password)`.
 * What a cluster user (`gatehouse user add`, src/cluster/users.ts) carries instead of its
 * password, as coturn's database keeps the HMAC key.
 */
export interface LongTermKeys {
  realm: string;
  md5: Buffer;
  sha256: Buffer;
}

/**
 * A TURN user: name, long-term password (configuration file, bootstrap user) or only its
 * precomputed keys (cluster users), and the groups policy selects on. Whatever needs the
 * clear password (Digest login) cannot use a keys-only user.
 */
export interface UserRecord {
  name: string;
  password?: string;
  keys?: LongTermKeys;
  groups: string[];
}

/** A user read from the configuration or the data dir: always a password. */
export type PasswordUser = UserRecord & { password: string };

export interface UserDirectory {
  lookup(name: string): UserRecord | undefined;
}

/** Users from the configuration file, plus the ones kept in the data dir. */
export class StaticUserDirectory implements UserDirectory {
  private readonly byName = new Map<string, UserRecord>();
  constructor(users: Iterable<UserRecord>) {
    // The configuration already refuses these (with file:line:column); the directory
    // refuses them too, so no other source can add a duplicate or passwordless user.
    for (const u of users) {
      if (!u.name) throw new GatehouseError('E_USER', 'a user has no name');
      if (!u.password) throw new GatehouseError('E_USER', `user ${JSON.stringify(u.name)} has an empty password`, { user: u.name });
      if (this.byName.has(u.name)) throw new GatehouseError('E_USER', `user ${JSON.stringify(u.name)} is defined twice`, { user: u.name });
      this.byName.set(u.name, { ...u, groups: [...u.groups] });
    }
  }
  lookup(name: string): UserRecord | undefined {
    return this.byName.get(name);
  }
  get size(): number {
    return this.byName.size;
  }
  names(): string[] {
    return [...this.byName.keys()];
  }
}

export const BOOTSTRAP_FILE = 'initial-user.json';

/**
 * First start with no users (as appliances do): make one user with a random password,
 * keep it in DATA_DIR/initial-user.json (mode 0600) and tell the caller it is new, so
 * the password is printed exactly once. Later starts read the same file silently.
 */
export function ensureBootstrapUser(dataDir: string, configured: UserEntry[]): { users: PasswordUser[]; created?: PasswordUser } {
  if (configured.length > 0) return { users: configured };
  const file = join(dataDir, BOOTSTRAP_FILE);
  if (existsSync(file)) {
    let u: Partial<UserRecord> | null = null;
    try {
      u = JSON.parse(readFileSync(file, 'utf8')) as Partial<UserRecord>;
    } catch {
      // The parse error may quote the file's contents (the password): not repeated.
    }
    if (!u || typeof u.name !== 'string' || !u.name || typeof u.password !== 'string' || !u.password) {
      throw new GatehouseError('E_USER', `${file}: not a user with a name and a non-empty password (delete it to have a new one made)`, {
        file,
      });
    }
    return { users: [{ name: u.name, password: u.password, groups: Array.isArray(u.groups) ? u.groups.map(String) : [] }] };
  }
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const user: PasswordUser = { name: 'admin', password: randomBytes(18).toString('base64url'), groups: [] };
  writeFileSync(file, JSON.stringify(user) + '\n', { mode: 0o600, flag: 'wx' });
  chmodSync(file, 0o600);
  return { users: [user], created: user };
}
