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

export type TurnSubject = { kind: 'user'; user: string } | { kind: 'guest'; conference: string; identity: string };

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
    const ttl = Math.max(1, Math.min(ttlS ?? this.ttlS, this.ttlS));
    const expiry = Math.floor(this.now() / 1000) + ttl;
    const username = `${expiry}:${restUser(subject)}`;
    return { urls: [...this.urls], username, credential: restCredential(this.secret, username), ttl };
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
