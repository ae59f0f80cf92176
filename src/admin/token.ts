import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { chmodSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { MIN_ADMIN_TOKEN_LENGTH, type GatehouseConfig } from '../config/config.js';
import { GatehouseError } from '../util/errors.js';

export const ADMIN_TOKEN_FILE = 'admin-token';

/** A fresh admin token: 256 bits from the CSPRNG, base64url (43 characters). */
export function generateAdminToken(): string {
  return randomBytes(32).toString('base64url');
}

/** The SHA-256 digest a secret (the admin token, a CSRF token) is compared through. */
export function secretDigest(secret: string): Buffer {
  return createHash('sha256').update(secret).digest();
}

/**
 * Whether `sent` is the secret whose digest is `expected`: SHA-256 digests compared in
 * constant time whatever the lengths, with no early exit. An empty or missing `sent`
 * never matches, whatever is configured.
 */
export function secretMatches(sent: string | undefined, expected: Buffer): boolean {
  return typeof sent === 'string' && sent.length > 0 && timingSafeEqual(secretDigest(sent), expected);
}

/** Why a token is unusable, or null; never includes the token itself. */
export function adminTokenProblem(token: string): string | null {
  if (token.length === 0) return 'the admin token is empty';
  if (/[\s\x00-\x1f\x7f]/.test(token)) return 'the admin token contains spaces or control characters';
  if (token.length < MIN_ADMIN_TOKEN_LENGTH) return `the admin token is shorter than ${MIN_ADMIN_TOKEN_LENGTH} characters`;
  return null;
}

/**
 * The admin token: `admin.token` from the configuration (checked by the schema), else
 * the one kept in DATA_DIR/admin-token (mode 0600), made on first start. A token file
 * that is empty, whitespace only or too short stops the start with an error naming the
 * file (delete it to have a new one made); the error never contains the token.
 */
export function loadOrCreateAdminToken(cfg: Pick<GatehouseConfig, 'admin' | 'data_dir'>): {
  token: string;
  file?: string;
  created: boolean;
} {
  if (cfg.admin.token !== null) {
    const problem = adminTokenProblem(cfg.admin.token);
    if (problem) throw new GatehouseError('E_ADMIN_TOKEN', `admin.token: ${problem}`);
    return { token: cfg.admin.token, created: false };
  }
  const file = join(cfg.data_dir, ADMIN_TOKEN_FILE);
  if (existsSync(file)) {
    // One trailing newline (or CRLF, or surrounding blanks) is what editors leave.
    const token = readFileSync(file, 'utf8').trim();
    const problem = adminTokenProblem(token);
    if (problem) {
      throw new GatehouseError(
        'E_ADMIN_TOKEN',
        `${file}: ${problem} (at least ${MIN_ADMIN_TOKEN_LENGTH} characters; delete the file to have a new token generated, or set admin.token)`,
        { file },
      );
    }
    return { token, file, created: false };
  }
  const token = generateAdminToken();
  writeFileSync(file, token + '\n', { mode: 0o600, flag: 'wx' });
  chmodSync(file, 0o600); // the umask may have narrowed, never widened, but be exact
  return { token, file, created: true };
}
