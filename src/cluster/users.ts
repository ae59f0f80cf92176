import type { Redis } from 'ioredis';
import type { Logger } from '../util/log.js';
import type { UserDirectory, UserRecord } from '../store/users.js';
import type { ClusterLink } from './link.js';
import { longTermKey } from '../wire/stun.js';

/**
 * TURN users shared by the gateways of a cluster (store.redis; README "Cluster").
 *
 * `gatehouse user add|remove|list --config FILE` (src/cli/user.ts) writes the hash
 * `<prefix>users` (field: the user name, value: JSON {realm, key_md5, key_sha256, groups})
 * and publishes the name on `<prefix>users`; every gateway keeps a copy in memory (read in
 * full on each (re)connection, one entry on each message), so a user added through one
 * gateway's configuration is usable on all at once, and a gateway keeps authenticating with
 * the copy it has while Redis is away.
 *
 * No password is stored, as coturn's database keeps the HMAC key: the entry holds the
 * RFC 8489 §9.2.2 long-term keys, MD5 and SHA-256 (PASSWORD-ALGORITHM 0x0002, §18.5) of
 * `username ":" OpaqueString(realm) ":" OpaqueString(password)`, computed by `user add` for
 * the configuration's `realm`. A key only verifies in its realm, so every gateway of a
 * cluster has the same `realm`; an entry made for another realm is refused (never used)
 * with a warning, and so is an entry of the first format ({password}: the password in
 * clear), which `gatehouse user add` must write again. Whatever needs the clear password
 * (Digest login, src/core/login.ts) cannot use these users.
 *
 * The users of the gateway's own configuration (`users:`) come first: a cluster entry of the
 * same name does not replace them.
 */
export const MAX_CLUSTER_USERS = 100_000;

/** Names quoted in one warning line (the count says the rest). */
const NAMES_LOGGED = 10;

const NAME = /^[^\s:]{1,128}$/;
const HEX_MD5 = /^[0-9a-f]{32}$/;
const HEX_SHA256 = /^[0-9a-f]{64}$/;

export function checkUserName(name: string): string | null {
  return NAME.test(name) ? null : 'a user name is 1-128 characters, no spaces or ":"';
}

/** What `user add` stores: the keys for `realm`, never the password (RFC 8489 §9.2.2). */
export interface StoredUser {
  name: string;
  groups: string[];
  realm: string;
  password: string;
}

export function encodeEntry(u: StoredUser): string {
  return JSON.stringify({
    realm: u.realm,
    key_md5: longTermKey(u.name, u.realm, u.password, 'md5').toString('hex'),
    key_sha256: longTermKey(u.name, u.realm, u.password, 'sha256').toString('hex'),
    groups: u.groups,
  });
}

/** Why an entry is not used: malformed, made for another realm, or the old clear-password form. */
export type Refusal = 'malformed' | 'other_realm' | 'clear_password';

type Parsed = { ok: true; user: UserRecord } | { ok: false; why: Refusal; realm?: string };

/** One hash value; `realm` null: any realm (the command's listing). */
export function parseEntry(name: string, json: string | null | undefined, realm: string | null): Parsed {
  let v: { realm?: unknown; key_md5?: unknown; key_sha256?: unknown; password?: unknown; groups?: unknown };
  try {
    v = JSON.parse(json ?? '') as typeof v;
  } catch {
    return { ok: false, why: 'malformed' };
  }
  if (!v || typeof v !== 'object') return { ok: false, why: 'malformed' };
  const groups = Array.isArray(v.groups) ? v.groups.filter((g): g is string => typeof g === 'string') : [];
  if (typeof v.password === 'string') return { ok: false, why: 'clear_password' };
  if (typeof v.realm !== 'string' || typeof v.key_md5 !== 'string' || typeof v.key_sha256 !== 'string')
    return { ok: false, why: 'malformed' };
  if (!HEX_MD5.test(v.key_md5) || !HEX_SHA256.test(v.key_sha256)) return { ok: false, why: 'malformed' };
  if (realm !== null && v.realm !== realm) return { ok: false, why: 'other_realm', realm: v.realm };
  return {
    ok: true,
    user: { name, groups, keys: { realm: v.realm, md5: Buffer.from(v.key_md5, 'hex'), sha256: Buffer.from(v.key_sha256, 'hex') } },
  };
}

export class ClusterUsers implements UserDirectory {
  private cache = new Map<string, UserRecord>();
  private readonly unsubscribe: () => void;
  private readonly counts = { loads: 0, failures: 0 };
  /** Entries not used at the last full read (plus single refusals since). */
  private refusedNow = 0;
  /** While load() scans: names whose entry changed meanwhile, read again after it. */
  private changedDuringLoad: Set<string> | null = null;

  /** `realm`: this gateway's (cfg.realm), the one every key must be made for. */
  constructor(
    private readonly link: ClusterLink,
    private readonly local: UserDirectory & { readonly size: number },
    private readonly realm: string,
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
    return { users: this.cache.size, refused: this.refusedNow, ...this.counts };
  }

  private onUp = (): void => {
    void this.load();
  };

  /** One warning line per kind of refusal (names, never keys), so the operator sees it. */
  private warnRefused(why: Refusal, names: string[], realms: Set<string>): void {
    if (!names.length) return;
    const shown = names.slice(0, NAMES_LOGGED);
    const users = { users: shown, count: names.length };
    if (why === 'other_realm')
      this.log?.warn(
        { ...users, realm: this.realm, their_realm: [...realms].slice(0, NAMES_LOGGED) },
        'cluster: REFUSED shared users whose keys were made for another realm: every gateway of a cluster needs the same "realm"; fix the configuration or add them again (gatehouse user add) with this realm',
      );
    else if (why === 'clear_password')
      this.log?.warn(
        users,
        'cluster: REFUSED shared users stored in the old form with their password in clear: add them again (gatehouse user add), which stores only the keys',
      );
    else this.log?.warn(users, 'cluster: ignored malformed shared user entries');
  }

  /**
   * Reads every cluster user (after each connection), HSCAN in pages of 1000 so no more
   * than about MAX_CLUSTER_USERS entries are ever held, however big the hash has grown.
   * Names that change meanwhile (a message during the scan) are read again after it, so
   * a user removed during a load does not come back from the scan's older copy.
   */
  async load(): Promise<void> {
    const changed = new Set<string>();
    this.changedDuringLoad = changed;
    try {
      const next = new Map<string, UserRecord>();
      const refused: Record<Refusal, string[]> = { malformed: [], other_realm: [], clear_password: [] };
      const realms = new Set<string>();
      let cursor = '0';
      scan: do {
        const [nextCursor, flat] = await this.link.redis.hscan(this.link.key('users'), cursor, 'COUNT', 1000);
        cursor = nextCursor;
        for (let i = 0; i + 1 < flat.length; i += 2) {
          if (next.size >= MAX_CLUSTER_USERS) break scan;
          const name = flat[i]!;
          if (checkUserName(name) !== null) continue;
          const u = parseEntry(name, flat[i + 1], this.realm);
          if (u.ok) next.set(name, u.user);
          else {
            if (refused[u.why].length < MAX_CLUSTER_USERS) refused[u.why].push(name);
            if (u.realm !== undefined && realms.size < NAMES_LOGGED) realms.add(u.realm);
          }
        }
      } while (cursor !== '0');
      this.cache = next;
      this.counts.loads++;
      this.refusedNow = refused.malformed.length + refused.other_realm.length + refused.clear_password.length;
      for (const why of Object.keys(refused) as Refusal[]) this.warnRefused(why, refused[why], realms);
    } catch (err) {
      this.counts.failures++;
      this.log?.warn({ err: (err as Error).message }, 'cluster: reading the shared users failed; keeping the copy in memory');
    } finally {
      if (this.changedDuringLoad === changed) this.changedDuringLoad = null;
      for (const name of changed) void this.refresh(name);
    }
  }

  private async refresh(name: string): Promise<void> {
    if (checkUserName(name) !== null) return;
    // Bounded like the cache: at most MAX_CLUSTER_USERS names wait for the load to end.
    if (this.changedDuringLoad && this.changedDuringLoad.size < MAX_CLUSTER_USERS) this.changedDuringLoad.add(name);
    try {
      const json = await this.link.redis.hget(this.link.key('users'), name);
      const u = json === null ? null : parseEntry(name, json, this.realm);
      if (u?.ok) {
        if (!this.cache.has(name) && this.cache.size >= MAX_CLUSTER_USERS) return;
        this.cache.set(name, u.user);
      } else {
        this.cache.delete(name);
        if (u && !u.ok) {
          this.refusedNow++;
          this.warnRefused(u.why, [name], new Set(u.realm !== undefined ? [u.realm] : []));
        }
      }
    } catch {
      this.counts.failures++; // the next (re)connection reads them all again
    }
  }

  close(): void {
    this.link.off('up', this.onUp);
    this.unsubscribe();
  }
}

/** The `gatehouse user` command's side: writes one user's keys (never its password) and tells the gateways. */
export async function putUser(redis: Redis, prefix: string, u: StoredUser): Promise<void> {
  await redis.hset(`${prefix}users`, u.name, encodeEntry(u));
  await redis.publish(`${prefix}users`, u.name);
}

export async function deleteUser(redis: Redis, prefix: string, name: string): Promise<boolean> {
  const n = await redis.hdel(`${prefix}users`, name);
  await redis.publish(`${prefix}users`, name);
  return n > 0;
}

/** One listed user: name, groups, the realm of its keys, and why gateways refuse it (if they do). */
export interface ListedUser {
  name: string;
  groups: string[];
  realm?: string;
  refused?: Refusal;
}

/** Names, groups and realms, never keys or passwords; `realm`: the gateways' (marks the others refused). */
export async function listUsers(redis: Redis, prefix: string, realm: string | null = null): Promise<ListedUser[]> {
  const all = await redis.hgetall(`${prefix}users`);
  return Object.entries(all)
    .map(([name, json]): ListedUser => {
      const u = parseEntry(name, json, realm);
      if (u.ok) return { name, groups: u.user.groups, realm: u.user.keys!.realm };
      return { name, groups: [], ...(u.realm !== undefined ? { realm: u.realm } : {}), refused: u.why };
    })
    .sort((a, b) => a.name.localeCompare(b.name));
}
