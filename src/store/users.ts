import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync, chmodSync } from 'node:fs';
import { join } from 'node:path';
import type { UserEntry } from '../config/config.js';

/** A TURN user: name, long-term password and the groups policy selects on. */
export interface UserRecord {
  name: string;
  password: string;
  groups: string[];
}

export interface UserDirectory {
  lookup(name: string): UserRecord | undefined;
}

/** Users from the configuration file, plus the ones kept in the data dir. */
export class StaticUserDirectory implements UserDirectory {
  private readonly byName = new Map<string, UserRecord>();
  constructor(users: Iterable<UserRecord>) {
    for (const u of users) this.byName.set(u.name, { ...u, groups: [...u.groups] });
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
export function ensureBootstrapUser(dataDir: string, configured: UserEntry[]): { users: UserRecord[]; created?: UserRecord } {
  if (configured.length > 0) return { users: configured };
  const file = join(dataDir, BOOTSTRAP_FILE);
  if (existsSync(file)) {
    const u = JSON.parse(readFileSync(file, 'utf8')) as UserRecord;
    return { users: [u] };
  }
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const user: UserRecord = { name: 'admin', password: randomBytes(18).toString('base64url'), groups: [] };
  writeFileSync(file, JSON.stringify(user) + '\n', { mode: 0o600, flag: 'wx' });
  chmodSync(file, 0o600);
  return { users: [user], created: user };
}
