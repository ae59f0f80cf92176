import type { Redis } from 'ioredis';
import type { Logger } from '../util/log.js';
import type { UserDirectory, UserRecord } from '../store/users.js';
import type { ClusterLink } from './link.js';

/**
 * TURN users shared by the gateways of a cluster (store.redis; README "Cluster").
 *
 * `gatehouse user add|remove|list --config FILE` (src/cli/user.ts) writes the hash
 * `<prefix>users` (field: the user name, value: JSON {password, groups}) and publishes the
 * name on `<prefix>users`; every gateway keeps a copy in memory (read in full on each
 * (re)connection, one entry on each message), so a user added through one gateway's
 * configuration is usable on all at once, and a gateway keeps authenticating with the copy
 * it has while Redis is away. The long-term credential needs the password (RFC 8489 §9.2.2:
 * the key is MD5/SHA-256 over user, realm and password, and the realm is each gateway's
 * setting), so Redis holds it as the configuration file does: protect it (requirepass or
 * an ACL user in store.redis, rediss:// beyond loopback).
 *
 * The users of the gateway's own configuration (`users:`) come first: a cluster entry of the
 * same name does not replace them.
 */
export const MAX_CLUSTER_USERS = 100_000;

const NAME = /^[^\s:]{1,128}$/;

export function checkUserName(name: string): string | null {
  return NAME.test(name) ? null : 'a user name is 1-128 characters, no spaces or ":"';
}

function parseEntry(name: string, json: string | null | undefined): UserRecord | null {
  if (!json) return null;
  try {
    const v = JSON.parse(json) as { password?: unknown; groups?: unknown };
    if (typeof v.password !== 'string' || !v.password) return null;
    const groups = Array.isArray(v.groups) ? v.groups.filter((g): g is string => typeof g === 'string') : [];
    return { name, password: v.password, groups };
  } catch {
    return null;
  }
}

export class ClusterUsers implements UserDirectory {
  private cache = new Map<string, UserRecord>();
  private readonly unsubscribe: () => void;
  private readonly counts = { loads: 0, failures: 0 };

  constructor(
    private readonly link: ClusterLink,
    private readonly local: UserDirectory & { readonly size: number },
    private readonly log?: Logger,
  ) {
    this.unsubscribe = link.subscribe('users', (name) => void this.refresh(name));
    link.on('up', this.onUp);
    if (link.up) void this.load();
  }

  lookup(name: string): UserRecord | undefined {
    return this.local.lookup(name) ?? this.cache.get(name);
  }

  /** The configuration's users and the cluster's (a name in both counts twice). */
  get size(): number {
    return this.local.size + this.cache.size;
  }

  get stats() {
    return { users: this.cache.size, ...this.counts };
  }

  private onUp = (): void => {
    void this.load();
  };

  /** Reads every cluster user (after each connection). */
  async load(): Promise<void> {
    try {
      const all = await this.link.redis.hgetall(this.link.key('users'));
      const next = new Map<string, UserRecord>();
      for (const [name, json] of Object.entries(all)) {
        if (next.size >= MAX_CLUSTER_USERS) break;
        const u = parseEntry(name, json);
        if (u) next.set(name, u);
      }
      this.cache = next;
      this.counts.loads++;
    } catch (err) {
      this.counts.failures++;
      this.log?.warn({ err: (err as Error).message }, 'cluster: reading the shared users failed; keeping the copy in memory');
    }
  }

  private async refresh(name: string): Promise<void> {
    if (checkUserName(name) !== null) return;
    try {
      const u = parseEntry(name, await this.link.redis.hget(this.link.key('users'), name));
      if (u) {
        if (!this.cache.has(name) && this.cache.size >= MAX_CLUSTER_USERS) return;
        this.cache.set(name, u);
      } else this.cache.delete(name);
    } catch {
      this.counts.failures++; // the next (re)connection reads them all again
    }
  }

  close(): void {
    this.link.off('up', this.onUp);
    this.unsubscribe();
  }
}

/** The `gatehouse user` command's side: writes one user and tells the gateways. */
export async function putUser(redis: Redis, prefix: string, u: UserRecord): Promise<void> {
  await redis.hset(`${prefix}users`, u.name, JSON.stringify({ password: u.password, groups: u.groups }));
  await redis.publish(`${prefix}users`, u.name);
}

export async function deleteUser(redis: Redis, prefix: string, name: string): Promise<boolean> {
  const n = await redis.hdel(`${prefix}users`, name);
  await redis.publish(`${prefix}users`, name);
  return n > 0;
}

/** Names and groups, never passwords. */
export async function listUsers(redis: Redis, prefix: string): Promise<{ name: string; groups: string[] }[]> {
  const all = await redis.hgetall(`${prefix}users`);
  return Object.entries(all)
    .flatMap(([name, json]) => {
      const u = parseEntry(name, json);
      return u ? [{ name, groups: u.groups }] : [];
    })
    .sort((a, b) => a.name.localeCompare(b.name));
}
