/**
 * RADIUS pass-through EAP backend (RFC 3579): the PCP server is the authenticator and a
 * RADIUS client (NAS). It answers the peer's first Request/Identity itself (RFC 3579 §2.1:
 * "the NAS MAY send an EAP-Request/Identity"), then relays each EAP Response in an
 * Access-Request (User-Name, EAP-Message, Message-Authenticator, the State of the last
 * Access-Challenge, RFC 3579 §3.1–§3.2, RFC 2865 §5.24) and the EAP packet of each
 * Access-Challenge / Access-Accept / Access-Reject back. On Access-Accept the MSK is
 * MS-MPPE-Recv-Key | MS-MPPE-Send-Key (RFC 2548 §2.4.2/§2.4.3, wire/radius.ts).
 *
 * One UDP socket per backend; at most 256 requests in flight (the Identifier space,
 * RFC 2865 §3); each request is retransmitted unchanged (same Identifier and Request
 * Authenticator, RFC 2865 §2.5 / RFC 5080 §2.2.1) until `retries` are used up.
 * The shared secret, State and MPPE keys are never logged.
 */
import { createSocket, type Socket } from 'node:dgram';
import { randomInt } from 'node:crypto';
import { EapCode, EapType, encodeEap } from '../../wire/eap.js';
import {
  RadiusAttr,
  RadiusCode,
  buildAccessRequest,
  eapFromAttributes,
  getAttr,
  mskFromAccept,
  verifyResponse,
  type RadiusAttribute,
  type RadiusPacket,
} from '../../wire/radius.js';
import type { EapBackend, EapSession, EapStep } from './backend.js';

export interface RadiusBackendOptions {
  address: string;
  port?: number;
  secret: string | Buffer;
  /** Milliseconds per try (default 3000). */
  timeout?: number;
  /** Retransmissions after the first try (default 2). */
  retries?: number;
  /** NAS-Identifier (RFC 2865 §5.32), default "gatehouse". */
  nasIdentifier?: string;
  /** Framed-MTU sent to the server (RFC 3579 §2.4: EAP fragment sizing), default 1000. */
  framedMtu?: number;
}

interface Pending {
  authenticator: Buffer;
  resolve: (p: RadiusPacket | null) => void;
}

export class RadiusBackend implements EapBackend {
  readonly name = 'radius';
  private sock: Socket | null = null;
  private readonly pending = new Map<number, Pending>();
  private nextId = randomInt(0, 256);
  private readonly secret: Buffer;
  readonly stats = { requests: 0, retransmits: 0, timeouts: 0, badResponses: 0 };

  constructor(readonly o: RadiusBackendOptions) {
    this.secret = Buffer.isBuffer(o.secret) ? o.secret : Buffer.from(o.secret, 'utf8');
  }

  private socket(): Socket {
    if (this.sock) return this.sock;
    const s = createSocket(this.o.address.includes(':') ? 'udp6' : 'udp4');
    s.on('message', (msg) => this.onMessage(msg));
    s.on('error', () => {
      /* a send error shows as a timeout of the request */
    });
    this.sock = s;
    return s;
  }

  private onMessage(msg: Buffer): void {
    if (msg.length < 20) return;
    const p = this.pending.get(msg[1]!);
    if (!p) return;
    const r = verifyResponse(msg, p.authenticator, this.secret);
    // RFC 2865 §3 / RFC 3579 §3.2: a response that does not verify is silently discarded.
    if (!r) {
      this.stats.badResponses++;
      return;
    }
    this.pending.delete(msg[1]!);
    p.resolve(r);
  }

  /** Sends one Access-Request; resolves with the verified response and the request authenticator, or null on timeout. */
  async exchange(eap: Buffer, attributes: RadiusAttribute[]): Promise<{ response: RadiusPacket; authenticator: Buffer } | null> {
    if (this.pending.size >= 256) return null;
    let id = this.nextId;
    while (this.pending.has(id)) id = (id + 1) & 0xff;
    this.nextId = (id + 1) & 0xff;
    const { packet, authenticator } = buildAccessRequest({ identifier: id, secret: this.secret, eap, attributes });
    this.stats.requests++;
    const sock = this.socket();
    const result = new Promise<RadiusPacket | null>((resolve) => this.pending.set(id, { authenticator, resolve }));
    const tries = 1 + (this.o.retries ?? 2);
    for (let i = 0; i < tries; i++) {
      if (i) this.stats.retransmits++;
      sock.send(packet, this.o.port ?? 1812, this.o.address);
      let timer: NodeJS.Timeout | undefined;
      const r = await Promise.race([
        result,
        new Promise<'timeout'>((res) => (timer = setTimeout(() => res('timeout'), this.o.timeout ?? 3000))),
      ]);
      clearTimeout(timer);
      if (r !== 'timeout') return r ? { response: r, authenticator } : null;
    }
    this.stats.timeouts++;
    this.pending.get(id)?.resolve(null);
    this.pending.delete(id);
    return null;
  }

  open(): EapSession {
    return new RadiusSession(this);
  }

  get secretBuffer(): Buffer {
    return this.secret;
  }

  close(): void {
    for (const p of this.pending.values()) p.resolve(null);
    this.pending.clear();
    this.sock?.close();
    this.sock = null;
  }
}

class RadiusSession implements EapSession {
  private readonly id = randomInt(0, 256);
  private userName: Buffer | null = null;
  private state: Buffer | null = null;
  private done = false;
  private lastId: number;

  constructor(private readonly b: RadiusBackend) {
    this.lastId = this.id;
  }

  firstRequest(): Buffer {
    return encodeEap({ code: EapCode.Request, identifier: this.id, type: EapType.Identity, data: Buffer.alloc(0) });
  }

  async step(response: Buffer): Promise<EapStep> {
    if (this.done || response.length < 5) return { eap: null };
    this.lastId = response[1]!;
    if (!this.userName) {
      // RFC 3579 §2.1: User-Name from the EAP Response/Identity.
      if (response[0] !== EapCode.Response || response[4] !== EapType.Identity || response[1] !== this.id) return { eap: null };
      this.userName = Buffer.from(response.subarray(5, Math.min(response.readUInt16BE(2), 5 + 253)));
      if (!this.userName.length) this.userName = Buffer.from('anonymous');
    }
    const attrs: RadiusAttribute[] = [
      { type: RadiusAttr.UserName, value: this.userName },
      { type: RadiusAttr.NasIdentifier, value: Buffer.from(this.b.o.nasIdentifier ?? 'gatehouse') },
      { type: RadiusAttr.FramedMtu, value: u32(this.b.o.framedMtu ?? 1000) },
      { type: RadiusAttr.NasPortType, value: u32(5) }, // RFC 2865 §5.41: Virtual
    ];
    if (this.state) attrs.push({ type: RadiusAttr.State, value: this.state }); // RFC 2865 §5.24: echo State unmodified
    const r = await this.b.exchange(response, attrs);
    if (!r) return this.fail('RADIUS server did not answer');
    const p = r.response;
    const eap = eapFromAttributes(p.attributes);
    switch (p.code) {
      case RadiusCode.AccessChallenge:
        this.state = getAttr(p, RadiusAttr.State) ?? null;
        if (!eap) return this.fail('Access-Challenge without EAP-Message');
        return { eap };
      case RadiusCode.AccessAccept: {
        this.done = true;
        const msk = mskFromAccept(p, this.b.secretBuffer, r.authenticator);
        if (!msk) return this.fail('Access-Accept without MS-MPPE keys');
        const user = getAttr(p, RadiusAttr.UserName) ?? this.userName!;
        return {
          eap: eap ?? encodeEap({ code: EapCode.Success, identifier: response[1]!, data: Buffer.alloc(0) }),
          outcome: { ok: true, msk, identity: user.toString('utf8'), groups: [] },
        };
      }
      case RadiusCode.AccessReject:
        this.done = true;
        return { eap: eap ?? this.failure(response[1]!), outcome: { ok: false, reason: 'Access-Reject' } };
      default:
        return this.fail('unexpected RADIUS code');
    }
  }

  private failure(id: number): Buffer {
    return encodeEap({ code: EapCode.Failure, identifier: id, data: Buffer.alloc(0) });
  }

  private fail(reason: string): EapStep {
    this.done = true;
    // RFC 3748 §4.2: the Failure carries the Identifier of the Response it answers.
    return { eap: this.failure(this.lastId), outcome: { ok: false, reason } };
  }

  close(): void {
    this.done = true;
    this.state = null;
  }
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0);
  return b;
}
