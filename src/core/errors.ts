/**
 * The core's error answers (core.md §2): JSON `{"error": {"code", "message"}}` with the
 * HTTP status of RFC 9110 §15. Messages name the rule that failed, never a secret
 * (token, key, password, invite URL).
 */
import type { ServerResponse } from 'node:http';

/**
 * core.md §2 codes, plus what the page is silent on: `internal` (500), `method_not_allowed`
 * (405), `conference_full` (409: the conference holds its most identities) and
 * `unavailable` (503: the directory cannot be reached and nothing cached answers).
 */
export type CoreErrorCode =
  | 'unauthenticated'
  | 'forbidden'
  | 'not_found'
  | 'unknown_fe'
  | 'identity_in_use'
  | 'gone'
  | 'bad_request'
  | 'replayed'
  | 'untrusted'
  | 'rate_limited'
  | 'method_not_allowed'
  | 'conference_full'
  | 'unavailable'
  | 'internal';

/** RFC 9110 §15 status of each code. */
export const STATUS_OF: Record<CoreErrorCode, number> = {
  unauthenticated: 401, // RFC 9110 §15.5.2
  replayed: 401,
  untrusted: 401,
  forbidden: 403, // §15.5.4
  not_found: 404, // §15.5.5
  method_not_allowed: 405, // §15.5.6
  unknown_fe: 409, // §15.5.10
  identity_in_use: 409,
  gone: 410, // §15.5.11
  bad_request: 400, // §15.5.1
  rate_limited: 429, // RFC 6585 §4
  internal: 500, // §15.6.1
  conference_full: 409, // §15.5.10: conflicts with the conference's current state
  unavailable: 503, // §15.6.4
};

/** Thrown by handlers; the router answers it as core.md §2 JSON. */
export class CoreError extends Error {
  readonly status: number;
  constructor(
    readonly code: CoreErrorCode,
    message: string,
    /** Extra response headers (WWW-Authenticate, Retry-After, Allow). */
    readonly headers: Record<string, string | string[]> = {},
    status?: number,
  ) {
    super(message);
    this.name = 'CoreError';
    this.status = status ?? STATUS_OF[code];
  }
}

export const badRequest = (message: string) => new CoreError('bad_request', message);
export const forbidden = (message = 'not allowed for this token') => new CoreError('forbidden', message);
export const notFound = (message = 'no such resource') => new CoreError('not_found', message);
export const gone = (message = 'no longer valid') => new CoreError('gone', message);
/** RFC 6750 §3: a missing or bad bearer token gets `WWW-Authenticate: Bearer`. */
export const unauthenticated = (message = 'a valid Bearer token is required', challenge: string | string[] = 'Bearer') =>
  new CoreError('unauthenticated', message, { 'www-authenticate': challenge });

/** The body of an error answer. */
export function errorBody(code: CoreErrorCode | string, message: string): { error: { code: string; message: string } } {
  return { error: { code, message } };
}

/** Writes a JSON answer (API answers are never cached: they carry tokens, RFC 9111 §5.2.2.5). */
export function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string | string[]> = {}): void {
  if (res.headersSent) {
    res.end();
    return;
  }
  const data = Buffer.from(JSON.stringify(body));
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': String(data.length),
    'cache-control': 'no-store',
    'x-content-type-options': 'nosniff',
    ...headers,
  });
  res.end(data);
}

export function sendError(res: ServerResponse, err: CoreError): void {
  sendJson(res, err.status, errorBody(err.code, err.message), err.headers);
}
