/**
 * `gatehouse login --cert CERT.pem --key KEY.pem [--chain MORE.pem] --core URL [--ca CA.pem]`:
 * a program's certificate login to a conferencing core (core.md §5). It gets a challenge
 * (`GET /v1/auth/challenge`), signs ASCII `gatehouse-core cert-auth v1` || the 24 challenge
 * bytes with the key (ECDSA P-256: SHA-256 with a DER signature; RSA: RSASSA-PSS SHA-256,
 * salt 32), retries `POST /v1/login` with `Authorization: Gatehouse-Cert ...` and prints
 * the login body (JSON: token, user, groups, expires) on stdout. Errors go to stderr as
 * the core's code and message; the key, the signature and the token never do.
 */
import { parseArgs } from 'node:util';
import { readFileSync } from 'node:fs';
import { createPrivateKey, sign as cryptoSign, constants, type KeyObject } from 'node:crypto';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import type { Writable } from 'node:stream';
import { formatCertAuthorization, certSignedBytes } from '../core/cert-header.js';
import { base64OfBytes } from '../util/base64.js';
import { pemBlocks } from '../util/pem.js';
import { isP256 } from '../util/p256.js';
import { CHALLENGE_BYTES } from '../core/challenges.js';

export const LOGIN_HELP = `Usage: gatehouse login --cert CERT.pem --key KEY.pem --core URL [options]

Logs in to a conferencing core with a client certificate (core.md §5, Gatehouse-Cert):
gets a challenge, signs it with the key, and prints the login answer as JSON on stdout:
  {"token": "...", "user": "...", "groups": [...], "expires": UNIX-SECONDS}
Programs read the token from it and send "Authorization: Bearer TOKEN" to the core.

Options:
  --cert FILE     PEM: the client (leaf) certificate, optionally followed by its
                  intermediate CA certificates.
  --key FILE      PEM private key of the certificate: ECDSA P-256 or RSA (2048 bits or
                  more), PKCS#8 or traditional, unencrypted.
  --chain FILE    PEM: more intermediate certificates, sent after those of --cert
                  (repeatable).
  --core URL      The core's director, e.g. https://core.example.org:8443.
  --ca FILE       PEM: the CA that signs the core's HTTPS certificate (default: the
                  system's trusted CAs).
  --help          This text.

Exit status: 0 logged in, 1 refused or unreachable (the core's error code and message
on stderr), 2 usage error.
`;

interface Answer {
  status: number;
  body: unknown;
}

const MAX_ANSWER = 64 * 1024;

function call(url: URL, method: string, headers: Record<string, string>, ca: Buffer | undefined): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const opts = { method, headers: { accept: 'application/json', ...headers }, ...(ca ? { ca } : {}), timeout: 30_000 };
    const req = (url.protocol === 'https:' ? httpsRequest : httpRequest)(url, opts, (res) => {
      const chunks: Buffer[] = [];
      let n = 0;
      res.on('data', (c: Buffer) => {
        n += c.length;
        if (n > MAX_ANSWER) req.destroy(new Error('the answer is too large'));
        else chunks.push(c);
      });
      res.on('end', () => {
        let body: unknown = null;
        try {
          body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
        } catch {
          body = null;
        }
        resolve({ status: res.statusCode ?? 0, body });
      });
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', reject);
    req.end();
  });
}

function pemCerts(text: string, file: string): Buffer[] {
  const ders = pemBlocks(text, 'CERTIFICATE');
  if (!ders.length) throw new Error(`${file}: no PEM certificate`);
  return ders;
}

/** core.md §5 signature by the leaf key. */
export function signChallenge(key: KeyObject, challengeBytes: Buffer): Buffer {
  const data = certSignedBytes(challengeBytes);
  const t = key.asymmetricKeyType;
  if (t === 'ec') {
    if (!isP256(key)) throw new Error('the key is an EC key on a curve other than P-256');
    return cryptoSign('sha256', data, { key, dsaEncoding: 'der' });
  }
  if (t === 'rsa' || t === 'rsa-pss') return cryptoSign('sha256', data, { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 });
  throw new Error('the key is neither ECDSA P-256 nor RSA');
}

function errorText(a: Answer): string {
  const e = (a.body as { error?: { code?: unknown; message?: unknown } } | null)?.error;
  return e && typeof e.code === 'string' ? `${e.code}: ${String(e.message ?? '')}` : `HTTP ${a.status}`;
}

export async function runLogin(argv: string[], io: { stdout: Writable; stderr: Writable }): Promise<number> {
  let args;
  try {
    args = parseArgs({
      args: argv,
      options: {
        cert: { type: 'string' },
        key: { type: 'string' },
        chain: { type: 'string', multiple: true },
        core: { type: 'string' },
        ca: { type: 'string' },
        help: { type: 'boolean' },
      },
      strict: true,
      allowPositionals: false,
    });
  } catch (err) {
    io.stderr.write(`gatehouse login: ${(err as Error).message}\n\n${LOGIN_HELP}`);
    return 2;
  }
  const v = args.values;
  if (v.help) {
    io.stdout.write(LOGIN_HELP);
    return 0;
  }
  if (!v.cert || !v.key || !v.core) {
    io.stderr.write(`gatehouse login: --cert, --key and --core are required\n\n${LOGIN_HELP}`);
    return 2;
  }
  let base: URL;
  try {
    base = new URL(v.core);
    if (base.protocol !== 'https:' && base.protocol !== 'http:') throw new Error('not http(s)');
  } catch {
    io.stderr.write(`gatehouse login: --core must be an http:// or https:// URL\n`);
    return 2;
  }
  let chain: Buffer[];
  let key: KeyObject;
  let ca: Buffer | undefined;
  try {
    chain = pemCerts(readFileSync(v.cert, 'utf8'), v.cert);
    for (const f of v.chain ?? []) chain.push(...pemCerts(readFileSync(f, 'utf8'), f));
    try {
      key = createPrivateKey(readFileSync(v.key));
    } catch {
      // Never the key's text: only that it could not be used.
      throw new Error(`${v.key}: not an unencrypted PEM private key`);
    }
    ca = v.ca ? readFileSync(v.ca) : undefined;
  } catch (err) {
    io.stderr.write(`gatehouse login: ${(err as Error).message}\n`);
    return 2;
  }
  const at = (path: string) => new URL(path, base.href.endsWith('/') ? base.href : `${base.href}/`);
  try {
    const c = await call(at('v1/auth/challenge'), 'GET', {}, ca);
    const challenge = (c.body as { challenge?: unknown } | null)?.challenge;
    if (c.status !== 200 || typeof challenge !== 'string') {
      io.stderr.write(`gatehouse login: no challenge from the core (${errorText(c)})\n`);
      return 1;
    }
    const bytes = base64OfBytes(challenge, CHALLENGE_BYTES);
    if (!bytes) {
      io.stderr.write(`gatehouse login: the core's challenge is not ${CHALLENGE_BYTES} bytes of base64\n`);
      return 1;
    }
    let signature: Buffer;
    try {
      signature = signChallenge(key, bytes);
    } catch (err) {
      io.stderr.write(`gatehouse login: ${v.key}: ${(err as Error).message}\n`);
      return 2;
    }
    const r = await call(
      at('v1/login'),
      'POST',
      { authorization: formatCertAuthorization(challenge, signature, chain), 'content-length': '0' },
      ca,
    );
    if (r.status !== 200 || !r.body || typeof (r.body as { token?: unknown }).token !== 'string') {
      io.stderr.write(`gatehouse login: refused (${errorText(r)})\n`);
      return 1;
    }
    io.stdout.write(`${JSON.stringify(r.body)}\n`);
    return 0;
  } catch (err) {
    io.stderr.write(`gatehouse login: ${base.origin}: ${(err as Error).message}\n`);
    return 1;
  }
}
