/**
 * `gatehouse keyagent`: the desktop key agent (key-escrow.md §6, src/keyagent/agent.ts).
 * Follows a browser's NSS key log and escrows the DTLS secrets of the associations the
 * trusted gateway waits for. Prints one JSON line per escrow outcome with --json (client
 * randoms and statuses only; never key material).
 *
 * Public API: runKeyagent(argv, io): Promise<number>, KEYAGENT_HELP
 */
import { parseArgs } from 'node:util';
import { createHash, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { Writable } from 'node:stream';
import { GatewayTrust, TrustError, fetchGatewayCertificate } from '../endpoint/trust.js';
import { restPassword } from '../turn/auth.js';
import { KeyEscrowClient } from '../keyagent/client.js';
import { KeyAgent } from '../keyagent/agent.js';

export const KEYAGENT_HELP = `Usage: gatehouse keyagent --keylog FILE --turn turn:HOST:PORT --user U (--password P | ...) (--gateway-cert FILE | ...)

Desktop key agent: follows a browser's NSS key log (SSLKEYLOGFILE, e.g. Firefox ESR) and
escrows the DTLS secrets (1.3 traffic and exporter secrets, 1.2 master secrets) of each new
WebRTC association to the Gatehouse gateway it trusts (KeyEscrow, key-escrow.md section 6),
only for associations that gateway says it waits for. Key material is kept in memory only
and never written anywhere; rotation and truncation of the key log are followed.

Options:
  --keylog FILE                       the NSS key log the browser writes (required; may not
                                      exist yet)
  --turn turn:HOST:PORT               the gateway's TURN address (UDP; required)
  --user U                            TURN user (with --rest-secret-file: the user name)
  --password P | --password-file F    TURN long-term password (or a TURN REST password with
                                      --user EXPIRY:NAME)
  --rest-secret-file F                mint TURN REST credentials (EXPIRY:USER, HMAC-SHA1 of
                                      the shared secret) instead of a password; the secret
                                      mints any user's credential: never on a user's desktop
  --rest-ttl SECONDS                  lifetime of minted REST credentials (default 86400)
  --gateway-cert FILE                 the gateway certificate (PEM); trusted by its
                                      fingerprint unless --gateway-ca or a fingerprint is given
  --gateway-cert-fingerprint HEX      trust a gateway certificate by SHA-256 (repeatable)
  --gateway-ca FILE, --ca FILE        trust gateway certificates issued by this CA (PEM)
  --gateway-cert-url URL              fetch the gateway certificate here instead of --gateway-cert
  --from-start                        also escrow associations already in the key log
  --json                              one JSON line per outcome on stdout
  --help                              this text

Exit status: 0 stopped by a signal, 1 could not start (trust, credentials), 2 usage error.
`;

interface Io {
  stdout: Writable;
  stderr: Writable;
}

/** turn:HOST[:PORT][?transport=udp] (RFC 7065 §3; default port 3478). */
function parseTurnUrl(url: string): { host: string; port: number; transport: string } {
  const m = /^turn:(\[[^\]]+\]|[^:?]+)(?::(\d+))?(?:\?transport=(udp|tcp))?$/.exec(url);
  if (!m) throw new Error(`not a turn: URL: ${url}`);
  return { host: m[1]!.replace(/^\[|\]$/g, ''), port: m[2] ? Number(m[2]) : 3478, transport: m[3] ?? 'udp' };
}

function usage(io: Io, msg: string): number {
  io.stderr.write(`gatehouse keyagent: ${msg}\n\n${KEYAGENT_HELP}`);
  return 2;
}

export async function runKeyagent(argv: string[], io: Io, signal?: AbortSignal): Promise<number> {
  let v: Record<string, unknown>;
  try {
    v = parseArgs({
      args: argv,
      options: {
        keylog: { type: 'string' },
        turn: { type: 'string' },
        user: { type: 'string' },
        password: { type: 'string' },
        'password-file': { type: 'string' },
        'rest-secret-file': { type: 'string' },
        'rest-ttl': { type: 'string' },
        'gateway-cert': { type: 'string' },
        'gateway-cert-fingerprint': { type: 'string', multiple: true },
        'gateway-ca': { type: 'string' },
        ca: { type: 'string' },
        'gateway-cert-url': { type: 'string' },
        'from-start': { type: 'boolean' },
        json: { type: 'boolean' },
        help: { type: 'boolean' },
      },
      strict: true,
    }).values;
  } catch (e) {
    return usage(io, (e as Error).message);
  }
  if (v.help) {
    io.stdout.write(KEYAGENT_HELP);
    return 0;
  }
  const keylog = v.keylog as string | undefined;
  if (!keylog) return usage(io, '--keylog is required');
  if (!v.turn) return usage(io, '--turn is required');
  let server: { host: string; port: number; transport: string };
  try {
    server = parseTurnUrl(v.turn as string);
  } catch (e) {
    return usage(io, (e as Error).message);
  }
  if (server.transport !== 'udp') return usage(io, 'only UDP TURN addresses are supported');
  const user = v.user as string | undefined;
  if (!user) return usage(io, '--user is required');
  let credentials: () => { username: string; password: string };
  if (v['rest-secret-file']) {
    const secret = readFileSync(v['rest-secret-file'] as string, 'utf8').trim();
    const ttl = Number(v['rest-ttl'] ?? 86400);
    if (!Number.isInteger(ttl) || ttl < 60) return usage(io, '--rest-ttl must be an integer of at least 60');
    // TURN REST (src/turn/auth.ts): USERNAME EXPIRY:USER, password base64(HMAC-SHA1(secret, USERNAME)).
    let cached: { username: string; password: string; expiry: number } | null = null;
    credentials = () => {
      const now = Math.floor(Date.now() / 1000);
      if (!cached || cached.expiry - now < ttl / 2) {
        const expiry = now + ttl;
        const username = `${expiry}:${user}`;
        cached = { username, password: restPassword(secret, username), expiry };
      }
      return { username: cached.username, password: cached.password };
    };
  } else {
    const pw = v['password-file']
      ? readFileSync(v['password-file'] as string, 'utf8').replace(/\r?\n$/, '')
      : (v.password as string | undefined);
    if (pw === undefined) return usage(io, '--password, --password-file or --rest-secret-file is required');
    credentials = () => ({ username: user, password: pw });
  }

  let certPem: string;
  let trust: GatewayTrust;
  try {
    if (v['gateway-cert']) certPem = readFileSync(v['gateway-cert'] as string, 'utf8');
    else if (v['gateway-cert-url']) certPem = await fetchGatewayCertificate(v['gateway-cert-url'] as string);
    else return usage(io, '--gateway-cert or --gateway-cert-url is required');
    const caFile = (v['gateway-ca'] ?? v.ca) as string | undefined;
    const pins = (v['gateway-cert-fingerprint'] as string[] | undefined) ?? [];
    // A certificate file IT deployed, with no other anchor, is pinned by its own fingerprint.
    if (!caFile && !pins.length && v['gateway-cert']) {
      pins.push(createHash('sha256').update(new X509Certificate(certPem).raw).digest('hex'));
    }
    trust = new GatewayTrust({ pinnedFingerprints: pins, ...(caFile ? { caPem: readFileSync(caFile, 'utf8') } : {}) });
  } catch (e) {
    if (e instanceof TrustError) return usage(io, e.reason);
    io.stderr.write(`gatehouse keyagent: ${(e as Error).message}\n`);
    return 1;
  }

  let client: KeyEscrowClient;
  try {
    client = new KeyEscrowClient({ host: server.host, port: server.port, credentials, trust, certificatePem: certPem });
  } catch (e) {
    io.stderr.write(`gatehouse keyagent: gateway not trusted: ${(e as Error).message}\n`);
    return 1;
  }
  const agent = new KeyAgent({ keylog, client, fromStart: !!v['from-start'] });
  const out = (o: Record<string, unknown>): void => {
    if (v.json) io.stdout.write(JSON.stringify({ time: new Date().toISOString(), ...o }) + '\n');
  };
  agent.on('escrowed', (e) =>
    out({ event: 'escrowed', client_random: e.clientRandom, status: e.status, keys: e.what, ms: Math.round(e.ms * 1000) / 1000 }),
  );
  agent.on('unknown', (e) => out({ event: 'unknown', client_random: e.clientRandom }));
  agent.on('error', (e: Error) => {
    // Reasons only (credential refusals, trust failures, no answer): never key material.
    io.stderr.write(`gatehouse keyagent: ${e.message}\n`);
    out({ event: 'error', reason: e.message });
  });
  agent.start();
  out({ event: 'started', gateway: `${server.host}:${server.port}`, fingerprint: client.fingerprint });
  await new Promise<void>((res) => {
    const done = (): void => res();
    process.once('SIGTERM', done);
    process.once('SIGINT', done);
    signal?.addEventListener('abort', done, { once: true });
  });
  agent.stop();
  out({ event: 'stopped', ...agent.stats });
  return 0;
}
