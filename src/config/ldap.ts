/**
 * `core.ldap:` — how the core reads `core.directory: ldap://host:port/BASE-DN` (README
 * "Identity" → "Directory (LDAP)"). Every key is checked here, and errors name the key;
 * src/config/config.ts mounts the schema and calls ldapCheck() for the cross-key rules.
 */
import { bool, checked, int, nullable, obj, str, type Schema } from './validate.js';
import { checkDn, isAttributeType } from '../util/ldap-escape.js';

export interface LdapConfig {
  /** The service account the core searches with; null: anonymous searches (RFC 4513 §5.1.1). */
  bind_dn: string | null;
  /** Its password (never logged or echoed), or bind_password_file (first line). */
  bind_password: string | null;
  bind_password_file: string | null;
  /** RFC 4511 §4.14 StartTLS on an ldap:// URL. */
  starttls: boolean;
  /**
   * Allows ldap:// without StartTLS to a host that is not loopback (the service account's
   * and users' passwords then cross the network in the clear). Off: a configuration error.
   */
  insecure: boolean;
  /** PEM file of the CA(s) the directory's certificate must chain to (ldaps:// or starttls); null: the system's. */
  tls: { ca: string | null };
  /** Where users are searched (subtree); null: the URL's base DN. */
  user_base: string | null;
  /** The attribute a login name is matched against: uid (OpenLDAP), sAMAccountName (Active Directory). */
  user_attribute: string;
  user_object_class: string;
  /** A whole filter instead, with `{user}` where the (escaped) name goes. */
  user_filter: string | null;
  /** Where groups are searched; null: the URL's base DN. */
  group_base: string | null;
  /** Groups whose member attribute holds the user's DN; null: no group search (memberOf only). */
  group_object_class: string | null;
  group_member_attribute: string;
  group_name_attribute: string;
  /** The user's attribute listing its groups' DNs (Active Directory, OpenLDAP memberof overlay); null: not read. */
  member_of_attribute: string | null;
  /** The user's attribute naming its organisation; null: every directory user is of core.org. */
  org_attribute: string | null;
  /** Seconds an answer is used without asking the directory again. */
  cache_ttl: number;
  /** Seconds past cache_ttl an answer may still be served while the directory is down. */
  stale_grace: number;
  /** Names cached at once (least recently used evicted first). */
  cache_size: number;
  /** Connect and operation time-out, milliseconds. */
  timeout_ms: number;
}

const attribute = (what: string): Schema<string> =>
  checked(what, (s) => (isAttributeType(s) ? null : `${JSON.stringify(s)} is not an attribute name (RFC 4512 §1.4), e.g. uid`));
const dn = checked('a DN like cn=gatehouse,ou=services,dc=example,dc=org', checkDn);

/** A filter with `{user}` (RFC 4515 §3: parenthesised, balanced outside escapes). */
export function checkUserFilter(s: string): string | null {
  if (!s.includes('{user}')) return 'the filter needs {user} where the login name goes';
  if (!s.startsWith('(') || !s.endsWith(')')) return 'a filter is parenthesised, e.g. (&(objectClass=user)(sAMAccountName={user}))';
  let depth = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (depth === 0 && i > 0) return 'the filter has text outside its parentheses';
    if (c === '\\') i += 2;
    else if (c === '(') depth++;
    else if (c === ')' && --depth < 0) return 'the filter has unbalanced parentheses';
  }
  return depth === 0 ? null : 'the filter has unbalanced parentheses';
}

export const ldapConfigSchema = obj<LdapConfig>({
  bind_dn: { schema: nullable(dn), default: () => null },
  // Never echo the value.
  bind_password: { schema: nullable(checked('a password', (s) => (s.length ? null : 'the password is empty'))), default: () => null },
  bind_password_file: { schema: nullable(str('a file path')), default: () => null },
  starttls: { schema: bool(), default: () => false },
  insecure: { schema: bool(), default: () => false },
  tls: { schema: obj({ ca: { schema: nullable(str('a PEM file path')), default: () => null } }) },
  user_base: { schema: nullable(dn), default: () => null },
  user_attribute: { schema: attribute('an attribute name'), default: () => 'uid' },
  user_object_class: { schema: attribute('an object class name'), default: () => 'person' },
  user_filter: { schema: nullable(checked('an LDAP filter with {user}', checkUserFilter)), default: () => null },
  group_base: { schema: nullable(dn), default: () => null },
  group_object_class: { schema: nullable(attribute('an object class name')), default: () => 'groupOfNames' },
  group_member_attribute: { schema: attribute('an attribute name'), default: () => 'member' },
  group_name_attribute: { schema: attribute('an attribute name'), default: () => 'cn' },
  member_of_attribute: { schema: nullable(attribute('an attribute name')), default: () => 'memberOf' },
  org_attribute: { schema: nullable(attribute('an attribute name')), default: () => null },
  cache_ttl: { schema: int(1, 86400, 'seconds from 1 to 86400'), default: () => 300 },
  stale_grace: { schema: int(0, 86400, 'seconds from 0 to 86400'), default: () => 300 },
  cache_size: { schema: int(1, 1_000_000), default: () => 10_000 },
  timeout_ms: { schema: int(100, 120_000, 'milliseconds from 100 to 120000'), default: () => 5000 },
});

/** core.directory split (RFC 4516 §2: the DN part is percent-encoded). */
export function parseLdapUrl(url: string): { scheme: 'ldap' | 'ldaps'; host: string; port: number; base: string } | string {
  const m = /^(ldaps?):\/\/(\[[0-9A-Fa-f:.]+\]|[^\s/:?]+)(?::(\d{1,5}))?(?:\/([^?]*))?$/.exec(url);
  if (!m) return `expected ldap://host:port/base-dn (no ?attributes, scope or filter), got ${JSON.stringify(url)}`;
  const scheme = m[1] as 'ldap' | 'ldaps';
  // RFC 4516 §2: default ports 389 (ldap) and 636 (ldaps).
  const port = m[3] ? Number(m[3]) : scheme === 'ldaps' ? 636 : 389;
  if (port < 1 || port > 65535) return `port ${port} is out of range 1-65535`;
  let base: string;
  try {
    base = decodeURIComponent(m[4] ?? '');
  } catch {
    return 'the base DN is not percent-encoded correctly (RFC 4516 §2)';
  }
  if (!base) return 'the URL names no base DN, e.g. ldap://ldap.example:389/dc=example,dc=org';
  const p = checkDn(base);
  if (p) return `base DN: ${p}`;
  return { scheme, host: m[2]!.replace(/^\[|\]$/g, ''), port, base };
}

/** Cross-key rules of core.ldap (and core.directory's form). */
export function ldapCheck(
  core: { directory: string | null; ldap: LdapConfig },
  at: (paths: string | string[], problem: string) => never,
): void {
  const l = core.ldap;
  if (l.bind_password !== null && l.bind_password_file !== null)
    at('core.ldap.bind_password_file', 'set core.ldap.bind_password or core.ldap.bind_password_file, not both');
  if (l.bind_dn !== null && l.bind_password === null && l.bind_password_file === null)
    at('core.ldap.bind_dn', 'core.ldap.bind_dn needs core.ldap.bind_password or core.ldap.bind_password_file');
  if (l.bind_dn === null && (l.bind_password !== null || l.bind_password_file !== null))
    at(l.bind_password !== null ? 'core.ldap.bind_password' : 'core.ldap.bind_password_file', 'a bind password needs core.ldap.bind_dn');
  if (!core.directory) return;
  const u = parseLdapUrl(core.directory);
  if (typeof u === 'string') at('core.directory', u);
  if (u.scheme === 'ldaps' && l.starttls) at('core.ldap.starttls', 'ldaps:// is TLS already: starttls is for ldap:// URLs');
}
