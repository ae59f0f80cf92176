/** A guest's side of core.md §4: RSA-OAEP of K for the FE, and the RFC 7616 Digest join. */
import { constants, createHash, publicEncrypt, randomBytes } from 'node:crypto';

export const sha256hex = (s: string) => createHash('sha256').update(s, 'utf8').digest('hex');

/** K of core.md §4.2: 22+ base64url characters (here 32 random bytes → 43). */
export const newConferenceKey = () => randomBytes(32).toString('base64url');

/** base64(RSA-OAEP SHA-256, MGF1-SHA-256, empty label, over UTF-8(K)). */
export function encryptKey(publicPem: string, k: string): string {
  return publicEncrypt({ key: publicPem, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' }, Buffer.from(k, 'utf8')).toString(
    'base64',
  );
}

export interface Answer {
  status: number;
  headers: Headers;
  json: any; // eslint-disable-line @typescript-eslint/no-explicit-any
  text: string;
}

export async function call(
  base: string,
  method: string,
  path: string,
  opts: { token?: string; body?: unknown; authorization?: string } = {},
): Promise<Answer> {
  const headers: Record<string, string> = {};
  if (opts.token) headers.authorization = `Bearer ${opts.token}`;
  if (opts.authorization) headers.authorization = opts.authorization;
  if (opts.body !== undefined) headers['content-type'] = 'application/json';
  const r = await fetch(base + path, { method, headers, body: opts.body === undefined ? undefined : JSON.stringify(opts.body) });
  const text = await r.text();
  let json: unknown = null;
  try {
    json = JSON.parse(text);
  } catch {
    /* not JSON */
  }
  return { status: r.status, headers: r.headers, json, text };
}

/** The params of a `Digest ...` challenge. */
export function parseChallenge(h: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const m of h.replace(/^Digest\s+/i, '').matchAll(/([a-z0-9-]+)=(?:"((?:[^"\\]|\\.)*)"|([^,\s]+))/gi))
    out[m[1]!.toLowerCase()] = m[2] ?? m[3]!;
  return out;
}

/** RFC 7616 §3.4 Authorization for a 401's challenge (qop=auth, SHA-256). */
export function digestAuthorization(challenge: string, username: string, password: string, method: string, uri: string, nc = 1): string {
  const c = parseChallenge(challenge);
  const cnonce = randomBytes(12).toString('hex');
  const ncs = nc.toString(16).padStart(8, '0');
  const ha1 = sha256hex(`${username}:${c.realm}:${password}`);
  const ha2 = sha256hex(`${method}:${uri}`);
  const response = sha256hex(`${ha1}:${c.nonce}:${ncs}:${cnonce}:auth:${ha2}`);
  const q = (s: string) => `"${s.replace(/[\\"]/g, (x) => '\\' + x)}"`;
  return `Digest username=${q(username)}, realm=${q(c.realm!)}, nonce=${q(c.nonce!)}, uri=${q(uri)}, algorithm=SHA-256, qop=auth, nc=${ncs}, cnonce=${q(cnonce)}, response=${q(response)}, opaque=${q(c.opaque!)}`;
}

/** A gateway user's login (core.md §3): the 401 challenge, then the Digest retry; the token. */
export async function loginUser(base: string, user: string, password: string): Promise<string> {
  const c = await fetch(`${base}/v1/login`, { method: 'POST' });
  if (c.status !== 401) throw new Error(`challenge: ${c.status}`);
  const authorization = digestAuthorization(c.headers.get('www-authenticate')!, user, password, 'POST', '/v1/login');
  const r = await fetch(`${base}/v1/login`, { method: 'POST', headers: { authorization } });
  if (r.status !== 200) throw new Error(`login ${user}: ${r.status}`);
  return ((await r.json()) as { token: string }).token;
}

/** The whole guest join: 401 challenge, then the authorized retry. Returns both answers. */
export async function joinAsGuest(
  base: string,
  conference: string,
  identity: string,
  k: string,
): Promise<{ challenge: Answer; answer: Answer }> {
  const path = `/v1/conferences/${encodeURIComponent(conference)}/join`;
  const challenge = await call(base, 'POST', path);
  const www = challenge.headers.get('www-authenticate');
  if (challenge.status !== 401 || !www) return { challenge, answer: challenge };
  const answer = await call(base, 'POST', path, { authorization: digestAuthorization(www, identity, k, 'POST', path) });
  return { challenge, answer };
}
