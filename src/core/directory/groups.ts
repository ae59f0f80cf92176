/**
 * The groups an issue record of user TURN credentials carries (src/core/turn-credentials.ts
 * IssueContext.groups; the gateway's policy selects on them, src/turn/auth.ts).
 *
 * With core.directory set they are the directory's groups for the user *at issue time*,
 * read through the directory's cache: never older than core.ldap.cache_ttl (plus
 * core.ldap.stale_grace while the directory is down). Every issue asks again — the join
 * answer, an invitation, and each re-issue of signalling's TURN timer (which awaits this
 * before it sends) — so a user removed from a group in the directory gets the new groups on
 * their next credentials once the cached answer is older than cache_ttl. Not the groups of
 * the token: those are as of login, up to core.token_ttl old.
 *
 * Who is not a directory user:
 * - a user of another organisation (token `org` not this core's, core.md §6) that the
 *   directory does not list under that organisation: the groups its login here gave it
 *   (never those of a same-named user of ours);
 * - one of the gateway's own users (`users:`, Digest login): undefined, so the TURN side
 *   reads their groups from the gateway's store;
 * - anyone else (e.g. removed from the directory since login): no credentials (403).
 * A directory that cannot answer: no credentials either (503), never guessed groups.
 * Without a directory: undefined (the TURN side reads the gateway's own user store), except
 * for a user of another organisation: the groups of its login here (src/core/transfer.ts).
 */
import type { CoreContext } from '../director.js';
import { CoreError } from '../errors.js';
import type { TokenClaims } from '../tokens.js';

export async function issueGroups(
  core: Pick<CoreContext, 'directory' | 'users'> & { cfg: { core: { org: string | null } } },
  claims: Pick<TokenClaims, 'sub' | 'groups' | 'org'>,
): Promise<readonly string[] | undefined> {
  const foreign = claims.org !== undefined && claims.org !== core.cfg.core.org;
  // A transferred user without a directory: the groups of its login here (core.md §6: none
  // unless a directory gave them), never the gateway store's for a same-named local user.
  if (!core.directory) return foreign ? [...claims.groups] : undefined;
  const u = await core.directory.user(claims.sub);
  // A home user (or a user the directory lists under the token's organisation).
  if (u && (!foreign || u.org === claims.org)) return u.groups;
  if (foreign) return [...claims.groups];
  if (core.users.lookup(claims.sub)) return undefined;
  throw new CoreError('forbidden', 'the directory does not have this user');
}
