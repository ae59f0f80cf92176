/**
 * The KeyEscrow client (key-escrow.md §6): one UDP socket to the gateway's TURN port,
 * long-term (or TURN REST) credentials exactly as a TURN client uses them (RFC 8489
 * §9.2: the 401 challenge gives REALM and NONCE; PASSWORD-ALGORITHMS offered by the
 * server are echoed and SHA-256 chosen with MESSAGE-INTEGRITY-SHA256, §9.2.4/§9.2.5; a
 * 438 gives a fresh NONCE and the request is sent again with a new transaction ID).
 * Responses are accepted only when their integrity verifies with the same key
 * (RFC 8489 §9.2.5) and, for success, when their KEY-REQUEST verifies with the trusted
 * gateway certificate (§6.5): only then are KEY-PENDING believed and keys sent.
 *
 * Public API:
 *   class KeyEscrowClient(opts) .query() .send(build) .close()
 *   interface EscrowAnswer { pending: KeyPending[]; statuses: number[] }
 */
import { createSocket, type Socket } from 'node:dgram';
import { randomBytes } from 'node:crypto';
import {
  Attr,
  Class,
  PasswordAlgorithmId,
  StunWriter,
  decodePasswordAlgorithms,
  decodeStun,
  getAttr,
  getAttrs,
  getErrorCode,
  getString,
  longTermKey,
  messageType,
  verifyIntegrity,
  verifyIntegritySha256,
  type StunMessage,
} from '../wire/stun.js';
import {
  ATTR_KEY_REQUEST,
  ATTR_KEY_STATUS,
  ATTR_WRITE_KEYS,
  decodeKeyRequest,
  decodeKeyStatus,
  sealWriteKeys,
  turnWriteKeysKey,
} from '../wire/escrow.js';
import { ATTR_KEY_PENDING, METHOD_KEY_ESCROW, decodeKeyPending, type KeyPending } from '../wire/keyescrow.js';
import { encodeKeySet, type KeySet } from '../wire/keyset.js';
import type { GatewayTrust, TrustedGateway } from '../endpoint/trust.js';
import { GatehouseError } from '../util/errors.js';
import { FEATURE_PASSWORD_ALGORITHMS, nonceFeatures } from '../wire/stun-nonce.js';

export class KeyEscrowError extends GatehouseError {
  constructor(
    readonly reason: string,
    readonly status?: number,
  ) {
    super('E_KEY_ESCROW', reason, status ? { status } : {});
    this.name = 'KeyEscrowError';
  }
}

export interface KeyEscrowClientOptions {
  host: string;
  port: number;
  /** Credentials: a function so a TURN REST credential can be minted afresh. */
  credentials(): { username: string; password: string };
  trust: GatewayTrust;
  /** The gateway certificate PEM (pinned or chained: trust.evaluate). */
  certificatePem: string;
  /** First retransmission timeout (RFC 8489 §6.2.1; default 250 ms, doubled, 5 sends). */
  rtoMs?: number;
}

export interface EscrowAnswer {
  pending: KeyPending[];
  statuses: number[];
}

const COOKIE = Buffer.from([0x21, 0x12, 0xa4, 0x42]);

export class KeyEscrowClient {
  private readonly sock: Socket;
  private readonly gw: TrustedGateway;
  private realm: string | null = null;
  private nonce: string | null = null;
  private sha256 = false;
  private pasValue: Buffer | null = null;
  private readonly waiting = new Map<string, (m: Buffer) => void>();
  private readonly w = new StunWriter(8192);
  private ready: Promise<void>;
  private closed = false;

  constructor(private readonly o: KeyEscrowClientOptions) {
    // §1: decided once, before anything is sent: the certificate must be trusted.
    this.gw = o.trust.evaluate(o.certificatePem);
    this.sock = createSocket(o.host.includes(':') ? 'udp6' : 'udp4');
    this.sock.on('message', (m) => {
      if (m.length < 20) return;
      const cb = this.waiting.get(m.subarray(8, 20).toString('hex'));
      if (cb) cb(m);
    });
    this.sock.on('error', () => {});
    this.ready = new Promise((res) => this.sock.bind(0, () => res()));
  }

  get fingerprint(): string {
    return this.gw.fingerprintHex;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.sock.close();
  }

  /** A pending query (§6.5). */
  query(): Promise<EscrowAnswer> {
    return this.send([]);
  }

  /** KeyEscrow with these key sets (at most 8, §6.3). The caller wipes its key sets. */
  async send(sets: KeySet[]): Promise<EscrowAnswer> {
    await this.ready;
    for (let attempt = 0; attempt < 3; attempt++) {
      const { m, tid, key } = await this.exchange(sets);
      try {
        if (m.cls === Class.Success) return this.accept(m, tid, key, sets.length);
        const err = getErrorCode(m);
        const code = err?.code ?? 0;
        if (code === 401 || code === 438) {
          // RFC 8489 §9.2.5: a 401 to a request that carried integrity means wrong
          // credentials; a 438 (stale nonce, or our replay guard) a fresh NONCE.
          const hadAuth = this.nonce !== null;
          this.takeChallenge(m);
          if (code === 401 && hadAuth && attempt > 0) throw new KeyEscrowError('credentials refused (401)', 401);
          continue;
        }
        // Authenticated errors carry integrity (RFC 8489 §9.2.4): unverified ones are dropped.
        if (!this.integrityOk(m, key)) throw new KeyEscrowError('error response without valid integrity');
        throw new KeyEscrowError(`gateway refused: ${code} ${err?.reason ?? ''}`.trim(), code);
      } finally {
        key?.fill(0);
      }
    }
    throw new KeyEscrowError('no authenticated answer');
  }

  private takeChallenge(m: StunMessage): void {
    const realm = getString(m, Attr.Realm);
    const nonce = getString(m, Attr.Nonce);
    if (!realm || !nonce) throw new KeyEscrowError('challenge without REALM or NONCE');
    const pas = getAttr(m, Attr.PasswordAlgorithms);
    const list = pas ? decodePasswordAlgorithms(pas) : null;
    // RFC 8489 §9.2.5: a NONCE whose cookie announces "Password algorithms" (§18.1) without
    // a PASSWORD-ALGORITHMS list is a downgrade (an attacker stripped it to get MD5): the
    // client must not retry. Nothing more is sent to this challenge.
    const features = nonceFeatures(nonce);
    if (features !== null && features & FEATURE_PASSWORD_ALGORITHMS && !list?.length)
      throw new KeyEscrowError('challenge announces password algorithms but carries none (RFC 8489 §9.2.5)');
    this.realm = realm;
    this.nonce = nonce;
    // RFC 8489 §9.2.5: echo the server's list, choose SHA-256 when offered.
    this.sha256 = !!list?.some((e) => e.id === PasswordAlgorithmId.SHA256);
    this.pasValue = this.sha256 && pas ? Buffer.from(pas) : null;
  }

  private integrityOk(m: StunMessage, key: Buffer | null): boolean {
    if (!key) return false;
    return this.sha256 ? verifyIntegritySha256(m, key) : verifyIntegrity(m, key);
  }

  private accept(m: StunMessage, tid: Buffer, key: Buffer | null, n: number): EscrowAnswer {
    if (!this.integrityOk(m, key)) throw new KeyEscrowError('success response without valid integrity');
    // §6.5: the gateway's signature over this transaction ID, with the trusted certificate.
    const krv = getAttrs(m, ATTR_KEY_REQUEST)[0];
    const kr = krv ? decodeKeyRequest(krv) : null;
    if (!kr) throw new KeyEscrowError('no KEY-REQUEST in the answer');
    this.o.trust.acceptKeyRequest(this.gw, tid, kr); // throws TrustError
    const statuses = getAttrs(m, ATTR_KEY_STATUS).map((v) => decodeKeyStatus(v) ?? -1);
    if (statuses.length !== n) throw new KeyEscrowError('KEY-STATUS count does not match');
    const pending: KeyPending[] = [];
    for (const v of getAttrs(m, ATTR_KEY_PENDING)) {
      const p = decodeKeyPending(v);
      if (p) pending.push(p);
    }
    return { pending, statuses };
  }

  /** One transaction (RFC 8489 §6.2.1 retransmissions over UDP); a fresh transaction ID each time. */
  private async exchange(sets: KeySet[]): Promise<{ m: StunMessage; tid: Buffer; key: Buffer | null }> {
    const tid = randomBytes(12);
    const w = this.w.reset(messageType(METHOD_KEY_ESCROW, Class.Request), tid);
    let key: Buffer | null = null;
    if (this.nonce && this.realm) {
      const { username, password } = this.o.credentials();
      key = longTermKey(username, this.realm, password, this.sha256 ? 'sha256' : 'md5');
      if (sets.length) {
        // §2.2 / §6.3: HKDF(long-term key, salt = this request's NONCE); AAD cookie + tid.
        const k = turnWriteKeysKey(key, Buffer.from(this.nonce, 'utf8'));
        const aad = Buffer.concat([COOKIE, tid]);
        try {
          for (const ks of sets) {
            const pt = encodeKeySet(ks);
            try {
              w.attr(ATTR_WRITE_KEYS, sealWriteKeys(k, aad, pt));
            } finally {
              pt.fill(0);
            }
          }
        } finally {
          k.fill(0);
        }
      }
      w.attr(Attr.Username, username);
      w.attr(Attr.Realm, this.realm);
      w.attr(Attr.Nonce, this.nonce);
      if (this.pasValue) {
        w.attr(Attr.PasswordAlgorithms, this.pasValue);
        w.attr(Attr.PasswordAlgorithm, Buffer.from([0, PasswordAlgorithmId.SHA256, 0, 0]));
        w.integritySha256(key);
      } else w.integrity(key);
    }
    w.fingerprint();
    const bytes = w.copy();
    const raw = await this.transact(tid, bytes);
    bytes.fill(0);
    const m = decodeStun(raw);
    if (!m || m.method !== METHOD_KEY_ESCROW) throw new KeyEscrowError('undecodable answer');
    return { m, tid, key };
  }

  private transact(tid: Buffer, bytes: Buffer): Promise<Buffer> {
    const id = tid.toString('hex');
    let rto = this.o.rtoMs ?? 250;
    return new Promise((resolve, reject) => {
      let sends = 0;
      let timer: NodeJS.Timeout | null = null;
      const fire = (): void => {
        if (this.closed) return reject(new KeyEscrowError('closed'));
        if (sends++ >= 5) {
          this.waiting.delete(id);
          return reject(new KeyEscrowError('no answer from the gateway'));
        }
        this.sock.send(bytes, this.o.port, this.o.host);
        timer = setTimeout(fire, rto);
        rto *= 2;
      };
      this.waiting.set(id, (m) => {
        if (timer) clearTimeout(timer);
        this.waiting.delete(id);
        resolve(Buffer.from(m));
      });
      fire();
    });
  }
}
