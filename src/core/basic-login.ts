/**
 * `Basic` login (core.md §3) for directory users: offered only when the director listens
 * https:// (core.tls: RFC 7617 §4, the password travels in the clear otherwise) and only
 * when core.directory is LDAP; the password is checked with an LDAP bind as the user
 * (src/core/directory/ldap.ts authenticate). The login body's groups and organisation are
 * the directory's.
 *
 * RFC 7617 §2: `credentials = "Basic" 1*SP token68`, token68 the base64 (RFC 4648 §4) of
 * user-id ":" password; the user-id cannot contain ":" (the first colon splits), neither
 * part may contain a control character. §2.1: the challenge advertises charset="UTF-8";
 * both parts are decoded as UTF-8 (an invalid sequence is refused) and normalised to NFC
 * (the UsernameCasePreserved and OpaqueString profiles of RFC 8265 both apply NFC).
 *
 * A directory outage is 503 `unavailable` (login.ts passes it on without challenges):
 * a password is never accepted from a cache.
 */
import { parseCoreListen } from '../config/config.js';
import { isPaddedBase64 } from '../util/base64.js';
import type { CoreContext, CoreModule } from './director.js';
import { CoreError } from './errors.js';
import type { RequestContext } from './http.js';
import { addLoginMechanism, type LoginMechanism } from './login.js';
import { hasControl } from './names.js';

/** The longest Authorization a Basic login reads (a name and password fit well within it). */
export const MAX_BASIC_HEADER = 4096;

export interface BasicCredentials {
  user: string;
  password: string;
}

/** RFC 7617 §2 credentials from an Authorization value, or null when it is not well-formed Basic. */
export function parseBasic(header: string | undefined): BasicCredentials | null {
  if (!header || header.length > MAX_BASIC_HEADER) return null;
  // RFC 9110 §11.1: the auth-scheme is case-insensitive; 1*SP, then token68.
  const m = /^basic +([^ ]+) *$/i.exec(header);
  if (!m) return null;
  const b64 = m[1]!;
  if (!isPaddedBase64(b64)) return null;
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(Buffer.from(b64, 'base64'));
  } catch {
    return null;
  }
  const colon = text.indexOf(':');
  if (colon < 0) return null;
  const user = text.slice(0, colon).normalize('NFC');
  const password = text.slice(colon + 1).normalize('NFC');
  if (!user || hasControl(user) || hasControl(password)) return null;
  return { user, password };
}

/**
 * The per-user lockout's key for a Basic user name (src/core/ratelimit.ts UserLockout). The
 * directory matches names with caseIgnoreMatch, prepared per RFC 4518: §2.2 maps soft
 * hyphens, zero-width and variation characters to nothing, other spaces to SPACE, and folds
 * case; §2.3 normalises to NFKC; §2.6.1 drops leading and trailing spaces and makes inner
 * runs one. So `Alice`, `ALICE` and ` alice` bind as one entry and must share one lockout
 * (else each spelling gets its own guesses). An approximation that only ever merges more.
 */
export function basicLockoutKey(user: string): string {
  return user
    .replace(/[\u00ad\u034f\u1806\u180b-\u180d\u200b-\u200d\u2060\ufe00-\ufe0f\ufeff\ufffc]/g, '')
    .normalize('NFKC')
    .toLowerCase()
    .normalize('NFKC')
    .replace(/[\s\p{Zs}]+/gu, ' ')
    .trim();
}

/** RFC 7617 §2 and §2.1: the challenge. */
export function basicChallenge(realm: string): string {
  return `Basic realm="${realm.replace(/["\\]/g, '\\$&')}", charset="UTF-8"`;
}

/** Whether the director offers Basic: https:// and an LDAP directory. */
export function basicOffered(core: CoreContext): boolean {
  return !!core.directory && /^ldaps?:\/\//.test(core.cfg.core.directory ?? '') && parseCoreListen(core.cfg.core.listen).scheme === 'https';
}

export function basicMechanism(core: CoreContext): LoginMechanism {
  const realm = core.cfg.realm;
  return {
    scheme: 'Basic',
    challenge: () => basicChallenge(realm),
    // The lockout counts per name as the directory compares it (basicLockoutKey).
    claimedUser: (ctx: RequestContext) => {
      const c = parseBasic(ctx.req.headers.authorization);
      return c ? basicLockoutKey(c.user) || null : null;
    },
    async verify(ctx) {
      const c = parseBasic(ctx.req.headers.authorization);
      if (!c) throw new CoreError('unauthenticated', 'the Basic credentials are malformed');
      const u = await core.directory!.authenticate(c.user, c.password);
      if (!u) throw new CoreError('unauthenticated', 'the credentials are not valid');
      return { user: u.name, groups: [...u.groups], ...(u.org !== undefined ? { org: u.org } : {}) };
    },
  };
}

/** Registers Basic when it is offered (module order: after loginModule). */
export const basicLoginModule: CoreModule = (core) => {
  if (basicOffered(core)) addLoginMechanism(core, basicMechanism(core));
};
