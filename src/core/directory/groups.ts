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
 * Without a directory: undefined (the TURN side reads the gateway's own user store).
 * A user the directory no longer has gets no credentials (403); a directory that cannot
 * answer gets none either (503): never credentials with guessed groups.
 */
import type { Directory } from '../director.js';
import { CoreError } from '../errors.js';

export async function issueGroups(directory: Directory | null, user: string): Promise<readonly string[] | undefined> {
  if (!directory) return undefined;
  const u = await directory.user(user);
  if (!u) throw new CoreError('forbidden', 'the directory no longer has this user');
  return u.groups;
}
