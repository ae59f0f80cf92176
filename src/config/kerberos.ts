/**
 * `core.kerberos:` — Negotiate (RFC 4559) login (README "Identity" → "Kerberos
 * (Negotiate)"). Every key is checked here and errors name the key; src/config/config.ts
 * mounts the schema. Whether the keytab can be read and holds the service's key is
 * checked when the core starts (src/core/negotiate.ts), not here.
 */
import { checked, int, list, nullable, obj, str } from './validate.js';

export interface KerberosConfig {
  /** The service's keytab (ktutil, kadmin ktadd, ktpass, msktutil); null: Negotiate off. */
  keytab: string | null;
  /**
   * The GSSAPI host-based service name whose key accepts tickets (RFC 2743 §4.1,
   * GSS_C_NT_HOSTBASED_SERVICE `service@host`, the principal HTTP/host@REALM); null:
   * `HTTP@` + this machine's host name.
   */
  service: string | null;
  /**
   * Realms whose users may log in (RFC 4120 §6.1: compared case-sensitively); []: the
   * realm(s) of the keytab's keys.
   */
  realm: string[];
  /** GSSAPI acceptor contexts in progress at once (one per request); beyond: 429. */
  max_concurrent: number;
}

/** RFC 4120 §6.1 domain-style realm names (what AD and MIT use): labels, no spaces. */
export function checkRealm(s: string): string | null {
  return /^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*$/.test(s) && s.length <= 255
    ? null
    : `${JSON.stringify(s)} is not a realm name like EXAMPLE.COM`;
}

/** `service@host` (RFC 2743 §4.1): the host part is a DNS name (no realm, no slash). */
export function checkService(s: string): string | null {
  const m = /^([A-Za-z][A-Za-z0-9_-]{0,63})@([A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)$/.exec(s);
  return m ? null : `expected a host-based service name like HTTP@gateway.example.com, got ${JSON.stringify(s)}`;
}

export const kerberosConfigSchema = obj<KerberosConfig>({
  keytab: { schema: nullable(str('a keytab file path')), default: () => null },
  service: { schema: nullable(checked('a service name like HTTP@gateway.example.com', checkService)), default: () => null },
  realm: { schema: list(checked('a realm like EXAMPLE.COM', checkRealm), { single: true }), default: () => [] },
  max_concurrent: { schema: int(1, 1024), default: () => 32 },
});
