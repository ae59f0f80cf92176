/**
 * TURN credentials for admitted participants (core.md §8), in the TURN REST style the
 * gateway's TURN server verifies (src/turn/auth.ts resolveCredential):
 *
 *   username   = EXPIRY ":" USER                        (users)
 *              = EXPIRY ":guest/" CONFERENCE "/" IDENTITY (guests)
 *   credential = base64(HMAC-SHA1(turn.rest_secret, username))
 *
 * EXPIRY is Unix seconds. The gateway re-checks the expiry on every authenticated
 * request (allocate, refresh, permission), so a short ttl (core.turn_ttl) bounds what a
 * removed participant keeps: signalling hands out fresh credentials to the ones who stay.
 *
 * A user's username names no conference (core.md §8 fixes its form), so the issuer keeps
 * a record per username it hands out: the conference or room it is for, the user's groups
 * as the directory gave them at issue time, and a transferred user's organisation. The
 * gateway's TURN server looks the record up (contextOf) when the credential is used, so
 * the flow's events carry gatehouse.conference and policy sees the directory's groups.
 * One username has one record: when the same user gets credentials for another conference
 * in the same second, EXPIRY is moved a second earlier (never later: revocation relies on
 * EXPIRY <= issue second + ttl, src/turn/revoked.ts) until the username is free. Records
 * live until their EXPIRY; at most MAX_RECORDS (expired first, then the oldest).
 */
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createHmac, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { isIP } from 'node:net';
import { parseListen, type GatehouseConfig } from '../config/config.js';

export interface TurnCredentials {
  urls: string[];
  username: string;
  credential: string;
  /** Seconds the credential is valid for. */
  ttl: number;
}

/** What the issue record says of a user's credential (src/turn/auth.ts IssuedContext). */
export interface IssueContext {
  conference?: string;
  room?: string;
  groups?: readonly string[];
  org?: string;
}

export type TurnSubject = { kind: 'user'; user: string; context?: IssueContext } | { kind: 'guest'; conference: string; identity: string };

export const MAX_RECORDS = 200_000;

function sameContext(a: IssueContext, b: IssueContext): boolean {
  return (
    a.conference === b.conference &&
    a.room === b.room &&
    a.org === b.org &&
    (a.groups ?? null)?.join('\n') === (b.groups ?? null)?.join('\n')
  );
}

/** TURN REST password (same computation as src/turn/auth.ts restPassword). */
export function restCredential(secret: string, username: string): string {
  return createHmac('sha1', secret).update(username, 'utf8').digest('base64');
}

/** The REST user part: `USER` or `guest/CONFERENCE/IDENTITY` (core.md §8). */
export function restUser(s: TurnSubject): string {
  return s.kind === 'user' ? s.user : `guest/${s.conference}/${s.identity}`;
}

/**
 * turn: / turns: URIs (RFC 7065 §3) for the gateway's listeners. An unspecified listen
 * address (0.0.0.0, ::) is advertised as `host` (turn.relay_address by default: the
 * address peers reach the gateway on).
 */
export function turnUrls(listen: string[], host: string): string[] {
  const out: string[] = [];
  for (const l of listen) {
    let p;
    try {
      p = parseListen(l);
    } catch {
      continue;
    }
    let h = p.host === '0.0.0.0' || p.host === '::' ? host : p.host;
    if (isIP(h) === 6) h = `[${h}]`;
    if (p.proto === 'udp') out.push(`turn:${h}:${p.port}?transport=udp`);
    else if (p.proto === 'tcp') out.push(`turn:${h}:${p.port}?transport=tcp`);
    else out.push(`turns:${h}:${p.port}?transport=tcp`);
  }
  return out;
}

export class TurnCredentialIssuer {
  /** username -> its issue record (users only); insertion order = issue order. */
  private readonly records = new Map<string, { context: IssueContext; expiry: number }>();

  constructor(
    private readonly secret: string,
    private readonly urls: string[],
    private readonly ttlS: number,
    private readonly now: () => number,
  ) {}

  static fromConfig(cfg: GatehouseConfig, secret: string, now: () => number): TurnCredentialIssuer {
    return new TurnCredentialIssuer(secret, turnUrls(cfg.turn.listen, cfg.turn.relay_address), cfg.core.turn_ttl, now);
  }

  /** Credentials for this subject, valid for the configured ttl (or less when asked). */
  issue(subject: TurnSubject, ttlS?: number): TurnCredentials {
    let ttl = Math.max(1, Math.min(ttlS ?? this.ttlS, this.ttlS));
    const nowS = Math.floor(this.now() / 1000);
    const user = restUser(subject);
    let username = `${nowS + ttl}:${user}`;
    const context = subject.kind === 'user' ? subject.context : undefined;
    if (context) {
      // One record per username: an earlier EXPIRY when this one is taken by another context.
      let held = this.records.get(username);
      while (held && held.expiry > nowS && !sameContext(held.context, context) && ttl > 1) {
        ttl--;
        username = `${nowS + ttl}:${user}`;
        held = this.records.get(username);
      }
      if (!held || held.expiry <= nowS || sameContext(held.context, context)) this.remember(username, context, nowS + ttl, nowS);
    }
    return { urls: [...this.urls], username, credential: restCredential(this.secret, username), ttl };
  }

  /** The issue record of a username this issuer handed out, while it is unexpired. */
  contextOf(username: string): IssueContext | undefined {
    const r = this.records.get(username);
    if (!r) return undefined;
    if (r.expiry * 1000 <= this.now()) {
      this.records.delete(username);
      return undefined;
    }
    return r.context;
  }

  get recordCount(): number {
    return this.records.size;
  }

  private remember(username: string, context: IssueContext, expiry: number, nowS: number): void {
    this.records.delete(username);
    if (this.records.size >= MAX_RECORDS) {
      for (const [k, r] of this.records) if (r.expiry <= nowS) this.records.delete(k);
      while (this.records.size >= MAX_RECORDS) this.records.delete(this.records.keys().next().value as string);
    }
    this.records.set(username, { context: { ...context, ...(context.groups ? { groups: [...context.groups] } : {}) }, expiry });
  }
}

export const REST_SECRET_FILE = 'turn-rest-secret';

/**
 * turn.rest_secret when configured; else the one kept in DATA_DIR/turn-rest-secret
 * (mode 0600), made on first use (256 random bits). The caller logs that it was made,
 * never the value.
 */
export function loadOrCreateRestSecret(
  dataDir: string,
  configured: string | null,
): { secret: string; created: boolean; file: string | null } {
  if (configured) return { secret: configured, created: false, file: null };
  const file = join(dataDir, REST_SECRET_FILE);
  if (existsSync(file)) {
    const s = readFileSync(file, 'utf8').trim();
    if (s.length >= 32) return { secret: s, created: false, file };
  }
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const secret = randomBytes(32).toString('base64url');
  writeFileSync(file, secret + '\n', { mode: 0o600 });
  chmodSync(file, 0o600);
  return { secret, created: true, file };
}
