// Gatehouse web client: the parts that are pure protocol (no DOM), as an ES module so
// tests can drive them in a real browser. Everything here follows the contract in
// ../shared/spec/core.md and the RFCs it names.

const enc = new TextEncoder();

/** Bytes → lowercase hex. */
export function hex(bytes) {
  return Array.from(new Uint8Array(bytes), (b) => b.toString(16).padStart(2, '0')).join('');
}

/** Bytes → base64 (RFC 4648 §4). */
export function base64(bytes) {
  let s = '';
  const u = new Uint8Array(bytes);
  for (let i = 0; i < u.length; i += 0x8000) s += String.fromCharCode(...u.subarray(i, i + 0x8000));
  return btoa(s);
}

/** Bytes → base64url without padding (RFC 4648 §5). */
export function base64url(bytes) {
  return base64(bytes).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

/** base64 (RFC 4648 §4) → bytes. */
export function fromBase64(s) {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

/** SHA-256 of a string (UTF-8) or bytes, as lowercase hex (WebCrypto). */
export async function sha256Hex(data) {
  const bytes = typeof data === 'string' ? enc.encode(data) : data;
  return hex(await crypto.subtle.digest('SHA-256', bytes));
}

/**
 * A conference key K (core.md §4.2): 32 random bytes from crypto.getRandomValues, as 43
 * base64url characters (256 bits, more than the 128 the contract asks for).
 */
export function makeConferenceKey() {
  return base64url(crypto.getRandomValues(new Uint8Array(32)));
}

/** PEM (RFC 7468 §2) → DER bytes of its one block. */
export function pemToDer(pem) {
  const m = /-----BEGIN ([A-Z0-9 ]+)-----([\s\S]*?)-----END \1-----/.exec(pem);
  if (!m) throw new Error('not a PEM block');
  return fromBase64(m[2].replace(/\s+/g, ''));
}

/**
 * The conference key encrypted for the front end (core.md §4.2): RSA-OAEP (RFC 8017
 * §7.1) over UTF-8(K) with SHA-256, MGF1-SHA-256 (WebCrypto uses the same hash for MGF1)
 * and an empty label, as standard base64.
 */
export async function encryptConferenceKey(publicKeyPem, key) {
  const spki = await crypto.subtle.importKey('spki', pemToDer(publicKeyPem), { name: 'RSA-OAEP', hash: 'SHA-256' }, false, ['encrypt']);
  const ct = await crypto.subtle.encrypt({ name: 'RSA-OAEP' }, spki, enc.encode(key));
  return base64(ct);
}

/**
 * Parses WWW-Authenticate values (RFC 9110 §11.6.1: one or more challenges, each
 * `auth-scheme [ 1*SP ( token68 / #auth-param ) ]`, auth-param = token BWS "=" BWS
 * ( token / quoted-string ), §11.2). fetch() joins several header lines with ", ", which
 * this grammar reads back as the list of challenges.
 * Returns [{scheme, params: {lowercased name: value}, token68?}].
 */
export function parseChallenges(header) {
  const out = [];
  const s = header ?? '';
  let i = 0;
  const tchar = /[!#$%&'*+\-.^_`|~0-9A-Za-z]/;
  const skipWs = () => {
    while (i < s.length && (s[i] === ' ' || s[i] === '\t')) i++;
  };
  const token = () => {
    const st = i;
    while (i < s.length && tchar.test(s[i])) i++;
    return s.slice(st, i);
  };
  const quoted = () => {
    // quoted-string (RFC 9110 §5.6.4): DQUOTE *( qdtext / quoted-pair ) DQUOTE
    let v = '';
    i++;
    while (i < s.length && s[i] !== '"') {
      if (s[i] === '\\' && i + 1 < s.length) i++;
      v += s[i++];
    }
    i++;
    return v;
  };
  let cur = null;
  while (i < s.length) {
    skipWs();
    if (s[i] === ',') {
      i++;
      continue;
    }
    const name = token();
    if (!name) {
      i++; // not a token: skip one character
      continue;
    }
    skipWs();
    if (s[i] === '=' && cur) {
      // auth-param of the current challenge (§11.2)
      i++;
      skipWs();
      cur.params[name.toLowerCase()] = s[i] === '"' ? quoted() : token();
      continue;
    }
    // A token not followed by "=": the auth-scheme of a new challenge.
    cur = { scheme: name, params: {} };
    out.push(cur);
    // token68 (§11.3) right after the scheme: followed by the end or a comma.
    const t68 = /^[A-Za-z0-9\-._~+/]+=*(?=\s*(,|$))/.exec(s.slice(i));
    if (t68) {
      cur.token68 = t68[0];
      i += t68[0].length;
    }
  }
  return out;
}

/** The Digest challenge of a 401 answer with algorithm SHA-256 (RFC 7616 §3.3), or null. */
export function digestChallenge(res) {
  const all = parseChallenges(res.headers.get('www-authenticate'));
  return (
    all.find(
      (c) =>
        c.scheme.toLowerCase() === 'digest' &&
        (c.params.algorithm ?? 'MD5').toUpperCase() === 'SHA-256' &&
        (c.params.qop ?? '').split(',').some((q) => q.trim() === 'auth'),
    ) ?? null
  );
}

/** A quoted-string value (RFC 9110 §5.6.4): backslash before " and \. */
function q(v) {
  return `"${String(v).replace(/[\\"]/g, (c) => '\\' + c)}"`;
}

/**
 * The Authorization header value answering a Digest challenge (RFC 7616 §3.4):
 *   HA1 = H(username ":" realm ":" password)                       §3.4.2 (algorithm SHA-256)
 *   HA2 = H(method ":" request-uri)                                §3.4.3 (qop=auth)
 *   response = H(HA1 ":" nonce ":" nc ":" cnonce ":" qop ":" HA2)  §3.4.1
 * A username that is not plain ASCII, or holds '"' or '\', goes in username* with the
 * RFC 8187 encoding (§3.4.4). nc is 8 hex digits (§3.4).
 */
export async function digestAuthorization({ challenge, method, uri, username, password, nc = 1, cnonce }) {
  const p = challenge.params;
  const realm = p.realm ?? '';
  const cn = cnonce ?? base64url(crypto.getRandomValues(new Uint8Array(16)));
  const ncs = nc.toString(16).padStart(8, '0');
  const ha1 = await sha256Hex(`${username}:${realm}:${password}`);
  const ha2 = await sha256Hex(`${method}:${uri}`);
  const response = await sha256Hex(`${ha1}:${p.nonce}:${ncs}:${cn}:auth:${ha2}`);
  // eslint-disable-next-line no-control-regex
  const plain = /^[\x20-\x7e]*$/.test(username) && !/["\\]/.test(username);
  const user = plain ? `username=${q(username)}` : `username*=UTF-8''${encodeURIComponent(username)}`;
  const parts = [
    user,
    `realm=${q(realm)}`,
    `uri=${q(uri)}`,
    'algorithm=SHA-256',
    `nonce=${q(p.nonce ?? '')}`,
    `nc=${ncs}`,
    `cnonce=${q(cn)}`,
    'qop=auth',
    `response=${q(response)}`,
  ];
  if (p.opaque !== undefined) parts.push(`opaque=${q(p.opaque)}`);
  return `Digest ${parts.join(', ')}`;
}

/** Error of an API call, with the contract's code (core.md §2). */
export class ApiError extends Error {
  constructor(status, code, message, retryAfter) {
    super(message || code || `HTTP ${status}`);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

async function readJson(res) {
  const text = await res.text();
  if (!text) return {};
  try {
    return JSON.parse(text);
  } catch {
    return {};
  }
}

/**
 * One JSON API call. credentials: 'omit' so that a 401 with a Digest challenge never
 * opens the browser's own login dialog (Fetch: the prompt needs includeCredentials).
 */
export async function api(method, url, { token, body, authorization } = {}) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (authorization) headers.Authorization = authorization;
  else if (token) headers.Authorization = `Bearer ${token}`; // RFC 6750 §2.1
  const res = await fetch(url, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: 'omit',
    cache: 'no-store',
  });
  return res;
}

/** Throws ApiError unless res is 2xx; returns the JSON body. */
export async function expectOk(res) {
  const j = await readJson(res);
  if (res.ok) return j;
  throw new ApiError(res.status, j?.error?.code ?? '', j?.error?.message ?? '', res.headers.get('retry-after'));
}

/**
 * POST with RFC 7616 Digest: the first try without Authorization must be 401 with a
 * Digest SHA-256 challenge (RFC 9110 §11.6.1); then the same request is retried with the
 * answer. Returns the JSON of the 2xx answer, or throws ApiError.
 */
export async function digestPost(url, username, password, body) {
  const first = await api('POST', url, { body });
  if (first.ok) return readJson(first);
  if (first.status !== 401) return expectOk(first);
  const challenge = digestChallenge(first);
  if (!challenge) throw new ApiError(401, 'unauthenticated', 'the server offers no Digest SHA-256 challenge');
  await first.body?.cancel().catch(() => {});
  const u = new URL(url, location.href);
  const authorization = await digestAuthorization({
    challenge,
    method: 'POST',
    uri: u.pathname + u.search, // digest-uri = request-target (RFC 7616 §3.4)
    username,
    password,
  });
  return expectOk(await api('POST', url, { body, authorization }));
}

/**
 * Whether a 401 offers the Negotiate scheme (RFC 4559 §4.1: a bare `Negotiate` among the
 * WWW-Authenticate challenges, which Fetch joins with ", ").
 */
export function offersNegotiate(res) {
  const h = res.headers.get('www-authenticate') ?? '';
  return /(?:^|,)\s*Negotiate\s*(?:,|$)/i.test(h);
}

/**
 * POST answered by the browser's own Negotiate (RFC 4559, Kerberos): with credentials
 * 'include' (Fetch: the HTTP-network fetch may then use the user agent's authentication
 * entries), a browser allowed to use Kerberos for this site (Chromium's
 * AuthServerAllowlist, Firefox's network.negotiate-auth.trusted-uris) answers the 401's
 * `WWW-Authenticate: Negotiate` with its ticket before the page sees anything. The page
 * never holds the ticket. Returns the JSON of the 2xx answer, or throws ApiError.
 */
export async function negotiatePost(url, body) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(url, {
    method: 'POST',
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: 'include',
    cache: 'no-store',
  });
  if (res.status === 401) {
    // The browser had no ticket, may not use Kerberos for this site, or the core refused it.
    const j = await readJson(res);
    throw new ApiError(
      401,
      j?.error?.code ?? 'unauthenticated',
      `Kerberos login failed: ${j?.error?.message ?? 'refused'}. Does this browser have a ticket, and may it use Kerberos for this site?`,
      null,
    );
  }
  return expectOk(res);
}

/** The Basic challenge of a 401 answer (RFC 7617 §2), or null. */
export function basicChallenge(res) {
  return parseChallenges(res.headers.get('www-authenticate')).find((c) => c.scheme.toLowerCase() === 'basic') ?? null;
}

/**
 * RFC 7617 §2: `Basic` base64(user-id ":" password), the octets UTF-8 (§2.1: the core's
 * challenge says charset="UTF-8"). A user-id cannot contain ":" (§2: the first colon splits).
 */
export function basicAuthorization(username, password) {
  if (username.includes(':')) throw new ApiError(400, 'bad_request', 'a user name cannot contain ":"');
  let bin = '';
  for (const b of new TextEncoder().encode(`${username}:${password}`)) bin += String.fromCharCode(b);
  return `Basic ${btoa(bin)}`;
}

/**
 * A password login (core.md §3): the first POST without Authorization gets the
 * challenges. `Basic` when the core offers it (only over HTTPS with an LDAP directory:
 * the password is checked by a bind as the user), and Digest SHA-256 when Basic is not
 * offered or refuses the password (the gateway's own users). Returns the JSON of the 2xx
 * answer, or throws ApiError (a 503 from a directory that is down, too).
 */
export async function passwordLogin(url, username, password) {
  const first = await api('POST', url);
  if (first.ok) return readJson(first);
  if (first.status !== 401) return expectOk(first);
  const basic = location.protocol === 'https:' && basicChallenge(first) !== null;
  await first.body?.cancel().catch(() => {});
  if (basic && !username.includes(':')) {
    const r = await api('POST', url, { authorization: basicAuthorization(username, password) });
    if (r.status !== 401 || !digestChallenge(r)) return expectOk(r);
    await r.body?.cancel().catch(() => {});
  }
  return digestPost(url, username, password);
}

/** TURN credentials of core.md §8 as an RTCIceServer (W3C webrtc §4.2.1). */
export function iceServersOf(turn) {
  if (!turn || !Array.isArray(turn.urls) || turn.urls.length === 0) return [];
  return [{ urls: turn.urls, username: turn.username, credential: turn.credential }];
}

/** An identity as core.md §4.3 allows: 1 to 64 characters, none of them '/', ':' or a control character. */
export function validIdentity(s) {
  const chars = Array.from(s ?? '');
  // eslint-disable-next-line no-control-regex
  return chars.length >= 1 && chars.length <= 64 && !/[/:\u0000-\u001f\u007f-\u009f]/.test(s);
}

/** Human size. */
export function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}
