/**
 * The rules for the names the core's identity code accepts and repeats: user and
 * organisation names from credentials (Basic, Kerberos principals, certificate CNs),
 * transfer bodies, and the `auth` events that name them. A name is bounded and carries no
 * control character (it ends up in events, logs and tokens' claims).
 */

/** The longest user or organisation name accepted, and the most of a claimed one an event or log repeats. */
export const MAX_NAME = 256;

// eslint-disable-next-line no-control-regex
const C0_DEL = /[\u0000-\u001f\u007f]/;
// eslint-disable-next-line no-control-regex
const C0_DEL_C1 = /[\u0000-\u001f\u007f-\u009f]/;
/** The users file's rule (src/config/config.ts): ':' splits a TURN REST username, '/' marks guests. */
// eslint-disable-next-line no-control-regex
const NOT_IN_USER = /[:/\u0000-\u001f\u007f]/;

/** Whether `s` has a control character: C0 (U+0000-U+001F) or DEL; with `c1`, U+0080-U+009F too. */
export function hasControl(s: string, c1 = false): boolean {
  return (c1 ? C0_DEL_C1 : C0_DEL).test(s);
}

/** 1 to `max` (MAX_NAME) characters without a control character (hasControl). */
export function isName(s: string, opts: { max?: number; c1?: boolean } = {}): boolean {
  return s.length > 0 && s.length <= (opts.max ?? MAX_NAME) && !hasControl(s, opts.c1);
}

/** Whether `s` has a character a user name of the users file may not: ':', '/' or a control character. */
export function hasNonUserChar(s: string): boolean {
  return NOT_IN_USER.test(s);
}
