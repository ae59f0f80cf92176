/**
 * A Kerberos client principal (as GSSAPI displays it, RFC 1964 §2.1.1: `name@REALM`, with
 * `\` escaping `@`, `/` and `\` inside a component) mapped to the user name the
 * directory knows: the realm must be one of the configured realms (RFC 4120 §6.1: realm
 * names compare case-sensitively) and is stripped; a principal with more than one
 * component (alice/admin, HTTP/host) or an escaped character is not a user and is
 * refused, so no principal can pose as another user's name.
 */

import { isName } from './names.js';

export type PrincipalUser = { ok: true; user: string; realm: string } | { ok: false; problem: string };

export function principalUser(principal: string, realms: readonly string[]): PrincipalUser {
  if (!principal) return { ok: false, problem: 'the ticket names no client' };
  if (principal.includes('\\')) return { ok: false, problem: 'the client principal has escaped characters' };
  const at = principal.lastIndexOf('@');
  if (at <= 0 || at === principal.length - 1) return { ok: false, problem: 'the client principal has no realm' };
  const name = principal.slice(0, at);
  const realm = principal.slice(at + 1);
  if (!realms.includes(realm)) return { ok: false, problem: `users of realm ${JSON.stringify(realm)} are not accepted here` };
  if (name.includes('/')) return { ok: false, problem: 'the client principal is not a user (it has an instance)' };
  if (name.includes('@')) return { ok: false, problem: 'the client principal is an enterprise name (RFC 6806 §5), not a user' };
  // src/core/names.ts: at most MAX_NAME characters (the auth event repeats it), no control character.
  if (!isName(name)) return { ok: false, problem: 'the client principal is not a user name' };
  return { ok: true, user: name, realm };
}
