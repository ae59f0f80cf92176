/**
 * core.directory over LDAP (RFC 4511) with ldapts: users, their groups and organisation,
 * and password checks by a simple bind as the user (RFC 4513 §5.1.3).
 *
 * - user(name): with the service account (core.ldap.bind_dn; anonymous when unset, RFC
 *   4513 §5.1.1), a subtree search under user_base for
 *   `(&(objectClass=OC)(ATTR=NAME))` (or core.ldap.user_filter), NAME escaped per RFC
 *   4515 §3. Exactly one entry is the user; none is "no such user"; more than one is
 *   ambiguous and refused (logged). Groups: the group_name_attribute of the first RDN of
 *   each memberOf DN (RFC 4514 §3), and of every group_object_class entry under
 *   group_base whose group_member_attribute holds the user's DN. Organisation: the
 *   org_attribute, else core.org.
 * - authenticate(name, password): a fresh search for the user's DN, then a bind as that DN
 *   on its own connection. An empty password is refused before any bind: RFC 4513
 *   §5.1.2 makes a simple bind with a DN and no password an *unauthenticated* bind that
 *   servers may report as success.
 *
 * Answers are cached (src/core/directory/cache.ts: cache_ttl, then stale up to
 * stale_grace while the directory is down, then 503). A password is never cached: every
 * authenticate binds. Every operation uses its own connection (connect, StartTLS where
 * configured, bind, operate, unbind), with core.ldap.timeout_ms for the connect and each
 * operation, and at most MAX_CONNECTIONS at once. Passwords never reach a log, an event
 * or an error message.
 */
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import type { ConnectionOptions } from 'node:tls';
import { randomBytes } from 'node:crypto';
import { Client, InvalidCredentialsError, ResultCodeError, SizeLimitExceededError, type Entry } from 'ldapts';
import type { GatehouseConfig } from '../../config/config.js';
import { isLoopbackHost } from '../../config/config.js';
import type { Logger } from '../../util/log.js';
import type { Directory, DirectoryUser } from '../director.js';
import { CoreError } from '../errors.js';
import { DirectoryCache, DirectoryDown } from './cache.js';
import { parseLdapUrl, type LdapConfig } from '../../config/ldap.js';
import { escapeFilterValue, firstRdnValue, isDnUnder } from '../../util/ldap-escape.js';

/** Connections to the directory open at once; beyond, lookups get 503 at once. */
export const MAX_CONNECTIONS = 32;
/** Groups one user may have (group search size limit); more is refused as an error, never truncated. */
export const MAX_GROUPS = 1000;
/** Longest login name and password looked up or bound with (bytes of UTF-8). */
export const MAX_NAME_BYTES = 256;
export const MAX_PASSWORD_BYTES = 1024;

export interface LdapSettings {
  url: string;
  secure: boolean;
  base: string;
  cfg: LdapConfig;
  bindPassword: string | null;
  tls: ConnectionOptions;
  /** core.org: the organisation of every user when no org_attribute is configured. */
  org: string | null;
}

/** Reads core.directory and core.ldap (the password file now: a missing file fails the start). */
export function ldapSettings(cfg: GatehouseConfig): LdapSettings {
  const u = parseLdapUrl(cfg.core.directory ?? '');
  if (typeof u === 'string') throw new Error(`core.directory: ${u}`);
  const l = cfg.core.ldap;
  let bindPassword = l.bind_password;
  if (l.bind_password_file !== null) {
    try {
      bindPassword = readFileSync(l.bind_password_file, 'utf8').split(/\r?\n/)[0] ?? '';
    } catch (err) {
      throw new Error(
        `core.ldap.bind_password_file: cannot read ${l.bind_password_file}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`,
      );
    }
    if (!bindPassword) throw new Error(`core.ldap.bind_password_file: ${l.bind_password_file} has an empty first line`);
  }
  // RFC 6066 §3: SNI names a host, never an address (the certificate check still uses the address).
  const tls: ConnectionOptions = { minVersion: 'TLSv1.2', ...(isIP(u.host) ? {} : { servername: u.host }) };
  if (l.tls.ca !== null) {
    try {
      tls.ca = readFileSync(l.tls.ca);
    } catch (err) {
      throw new Error(`core.ldap.tls.ca: cannot read ${l.tls.ca}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`);
    }
  }
  const host = u.host.includes(':') ? `[${u.host}]` : u.host;
  return {
    url: `${u.scheme}://${host}:${u.port}`,
    secure: u.scheme === 'ldaps' || l.starttls,
    base: u.base,
    cfg: l,
    bindPassword,
    tls,
    org: cfg.core.org,
  };
}

/** An attribute's values (ldapts keys entries by the server's spelling: case-insensitive). */
function values(e: Entry, attr: string): string[] {
  const a = attr.toLowerCase();
  for (const k of Object.keys(e)) {
    if (k.toLowerCase() !== a || k === 'dn') continue;
    const v = e[k]!;
    const list = Array.isArray(v) ? v : [v];
    return list.map((x) => (Buffer.isBuffer(x) ? x.toString('utf8') : String(x)));
  }
  return [];
}

const utf8Bytes = (s: string) => Buffer.byteLength(s, 'utf8');

interface Found {
  dn: string;
  user: DirectoryUser;
}

export class LdapDirectory implements Directory {
  private readonly cache: DirectoryCache<Found | null>;
  private open = 0;

  constructor(
    private readonly s: LdapSettings,
    private readonly log: Logger,
    now: () => number,
  ) {
    this.cache = new DirectoryCache<Found | null>({
      ttlMs: s.cfg.cache_ttl * 1000,
      graceMs: s.cfg.stale_grace * 1000,
      max: s.cfg.cache_size,
      maxInFlight: MAX_CONNECTIONS,
      now,
      onStale: (name, ageMs) => log.warn({ user: name, age_s: Math.round(ageMs / 1000) }, 'directory unreachable: serving a cached answer'),
    });
    const host = new URL(s.url.replace(/^ldaps?:/, 'http:')).hostname.replace(/^\[|\]$/g, '');
    if (!s.secure && !isLoopbackHost(host))
      log.warn({ directory: s.url }, 'core.directory is ldap:// without core.ldap.starttls: passwords cross the network in the clear');
  }

  static fromConfig(cfg: GatehouseConfig, log: Logger, now: () => number): LdapDirectory {
    return new LdapDirectory(ldapSettings(cfg), log, now);
  }

  /** Names cached now (tests). */
  get cached(): number {
    return this.cache.size;
  }

  async user(name: string): Promise<DirectoryUser | null> {
    if (!this.plausible(name)) return null;
    const key = name.normalize('NFC');
    const f = await this.cache.get(key, () => this.find(key));
    return f ? copy(f.user) : null;
  }

  async authenticate(name: string, password: string): Promise<DirectoryUser | null> {
    // RFC 4513 §5.1.2: a bind with a DN and an empty password is an unauthenticated bind.
    if (!this.plausible(name) || !password || utf8Bytes(password) > MAX_PASSWORD_BYTES) return null;
    const key = name.normalize('NFC');
    // A fresh search: the bind must be against the directory's current entry.
    const f = await this.guarded(() => this.find(key));
    this.cache.set(key, f);
    // An unknown name gets a bind too, as a DN that cannot exist: without it the answer
    // for an unknown user comes one directory round trip sooner than for a wrong password,
    // and the time tells an attacker which names exist. slapd answers invalidCredentials
    // for a DN it does not hold, as for a wrong password (RFC 4511 §4.1.9: a server may
    // substitute result codes to prevent disclosure); whatever it answers, it is a failure.
    const dn = f ? f.dn : `cn=${randomBytes(16).toString('hex')},${this.s.base}`;
    const ok = await this.guarded(() =>
      this.withClient(false, async (c) => {
        try {
          await c.bind(dn, password); // RFC 4513 §5.1.3 simple bind as the user
          return true;
        } catch (err) {
          if (err instanceof InvalidCredentialsError) return false; // resultCode 49 (RFC 4511 §4.1.9)
          if (!f && err instanceof ResultCodeError) return false; // any answer to the decoy bind
          throw err;
        }
      }),
    );
    return ok && f ? copy(f.user) : null;
  }

  /** The user named, or null: names are bounded and free of NUL. */
  private plausible(name: string): boolean {
    return name.length > 0 && utf8Bytes(name) <= MAX_NAME_BYTES && !name.includes('\u0000');
  }

  /** DirectoryDown → 503 (for the uncached path of authenticate). */
  private async guarded<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      if (err instanceof DirectoryDown)
        throw new CoreError('unavailable', `the directory cannot be reached (${err.message}); try again later`, { 'retry-after': '30' });
      throw err;
    }
  }

  /** One search for the user, then its groups (service bind). */
  private async find(name: string): Promise<Found | null> {
    const l = this.s.cfg;
    return this.withClient(true, async (c) => {
      const esc = escapeFilterValue(name);
      const filter = l.user_filter
        ? l.user_filter.split('{user}').join(esc)
        : `(&(objectClass=${l.user_object_class})(${l.user_attribute}=${esc}))`;
      const attributes = [
        l.user_attribute,
        ...(l.member_of_attribute ? [l.member_of_attribute] : []),
        ...(l.org_attribute ? [l.org_attribute] : []),
      ];
      let entries: Entry[];
      try {
        ({ searchEntries: entries } = await c.search(l.user_base ?? this.s.base, {
          scope: 'sub',
          filter,
          attributes,
          sizeLimit: 2,
          timeLimit: Math.ceil(l.timeout_ms / 1000),
        }));
      } catch (err) {
        if (err instanceof SizeLimitExceededError) entries = [{ dn: '' }, { dn: '' }];
        else throw err;
      }
      if (entries.length !== 1) {
        if (entries.length > 1) this.log.warn({ user: name }, 'directory: the name matches several entries; refused');
        return null;
      }
      const e = entries[0]!;
      // The directory's spelling of the name (matching rules may ignore case).
      const names = values(e, l.user_attribute);
      const canonical = names.find((n) => n.toLowerCase() === name.toLowerCase()) ?? names[0] ?? name;
      const groups = new Set<string>();
      if (l.member_of_attribute) {
        // Only groups under the group base (or the directory's base) count: a `cn=trading`
        // someone could create in another subtree must not select the trading desk's rules.
        const groupBase = l.group_base ?? this.s.base;
        for (const g of values(e, l.member_of_attribute)) {
          if (!isDnUnder(g, groupBase)) continue;
          const n = firstRdnValue(g, l.group_name_attribute);
          if (n) groups.add(n);
        }
      }
      if (l.group_object_class) {
        let found: Entry[];
        try {
          ({ searchEntries: found } = await c.search(l.group_base ?? this.s.base, {
            scope: 'sub',
            filter: `(&(objectClass=${l.group_object_class})(${l.group_member_attribute}=${escapeFilterValue(e.dn)}))`,
            attributes: [l.group_name_attribute],
            sizeLimit: MAX_GROUPS,
            timeLimit: Math.ceil(l.timeout_ms / 1000),
          }));
        } catch (err) {
          // Never a truncated list (a deny rule could be on a group left out).
          if (err instanceof SizeLimitExceededError) throw new DirectoryDown(`more than ${MAX_GROUPS} groups`);
          throw err;
        }
        for (const g of found) {
          const n = firstRdnValue(g.dn, l.group_name_attribute) ?? values(g, l.group_name_attribute)[0];
          if (n) groups.add(n);
        }
      }
      if (groups.size > MAX_GROUPS) throw new DirectoryDown(`more than ${MAX_GROUPS} groups`);
      const org = l.org_attribute ? values(e, l.org_attribute)[0] : (this.s.org ?? undefined);
      return { dn: e.dn, user: { name: canonical, groups: [...groups].sort(), ...(org ? { org } : {}) } };
    });
  }

  /**
   * One connection: connect (TLS for ldaps://), StartTLS where configured (RFC 4511
   * §4.14, before any bind: RFC 4513 §3), the service bind when asked, fn, unbind. A
   * failure to reach or use the directory is DirectoryDown; fn's own answers pass.
   */
  private async withClient<T>(serviceBind: boolean, fn: (c: Client) => Promise<T>): Promise<T> {
    if (this.open >= MAX_CONNECTIONS) throw new DirectoryDown('too many directory connections');
    this.open++;
    const l = this.s.cfg;
    // tlsOptions only for ldaps:// (ldapts connects with TLS whenever they are given).
    const ldaps = this.s.url.startsWith('ldaps:');
    const c = new Client({
      url: this.s.url,
      timeout: l.timeout_ms,
      connectTimeout: l.timeout_ms,
      ...(ldaps ? { tlsOptions: this.s.tls } : {}),
      strictDN: true,
    });
    let stage = 'connect';
    try {
      if (l.starttls) {
        stage = 'starttls';
        await c.startTLS(this.s.tls);
      }
      if (serviceBind && l.bind_dn) {
        stage = 'service bind';
        await c.bind(l.bind_dn, this.s.bindPassword ?? '');
      }
      stage = 'operation';
      return await fn(c);
    } catch (err) {
      if (err instanceof DirectoryDown) throw err;
      // The service account refused (49) is a configuration fault: the directory cannot answer.
      const code = (err as { code?: unknown }).code;
      // ldapts connects on the first operation: a socket error code means the connect failed.
      if (typeof code === 'string' && /^E[A-Z]+$/.test(code)) stage = 'connect';
      this.log.warn(
        { directory: this.s.url, stage, error: describeError(err), ...(code !== undefined ? { code } : {}) },
        'directory operation failed',
      );
      throw new DirectoryDown(`${stage} failed`);
    } finally {
      this.open--;
      c.unbind().catch(() => {});
    }
  }
}

function copy(u: DirectoryUser): DirectoryUser {
  return { name: u.name, groups: [...u.groups], ...(u.org !== undefined ? { org: u.org } : {}) };
}

/** An error's class and message (ldapts messages carry no credentials). */
function describeError(err: unknown): string {
  if (err instanceof Error) return `${err.name}: ${err.message}`.slice(0, 300);
  return String(err).slice(0, 300);
}
