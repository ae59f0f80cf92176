/**
 * The endpoint side of RFC 7652 PCP authentication: the PA client state machine and an
 * EAP-TLS peer (RFC 5216 for TLS 1.2, RFC 9190 for TLS 1.3) with the endpoint's client
 * certificate over node:tls (in memory), and the AUTHENTICATION_TAG of common requests.
 *
 * API (for the endpoint PCP client, src/endpoint/pcp-client.ts):
 *
 *   const auth = await authenticate(send, {
 *     clientAddress: '192.0.2.10',          // the PCP client's IP, written in the request header (RFC 6887 §7.1)
 *     cert, key,                            // PEM: the endpoint's client certificate and key
 *     ca,                                   // PEM roots the gateway's (or the AAA's) server certificate must chain to
 *     identity: 'alice@example.com',        // EAP Response/Identity (default: the certificate is what authenticates)
 *     servername?: 'gw.example.com',        // checks the server certificate's name when given
 *     minVersion?, maxVersion?: 'TLSv1.2' | 'TLSv1.3',
 *   });
 *   // send(buf, expectReply): sends one PCP request to the server and resolves with the
 *   //   response datagram (the caller owns the socket, the retransmission of RFC 6887 §8.1.1
 *   //   and the timeout); with expectReply false it resolves null once sent.
 *   auth.sa            // { sessionId, keyId, transportKey, msk, mac, prf, lifetime, expiresAt, tlsVersion }
 *   auth.tag(request)  // appends AUTHENTICATION_TAG (RFC 7652 §5.4) with the next sequence number
 *   auth.verify(resp)  // true when the response's AUTHENTICATION_TAG is valid for this SA and its
 *                      //   sequence number is above every one seen (RFC 7652: replay protection)
 *   auth.expired()     // true once the PA lifetime (SESSION_LIFETIME, §5.9) has passed: authenticate again
 *   auth.sa.renewAt    // ms: re-authenticate from here (80% of the lifetime); the server replaces the SA
 *   await auth.terminate(send)  // PA-Client SESSION_TERMINATED (ends the SA on the server)
 *
 * Errors: authenticate() rejects with PcpAuthError (result = the PCP result code, e.g.
 * AUTHENTICATION_FAILED 16) and never puts key material in the message.
 *
 * Imports wire and node only (floor rule: endpoint imports wire, util).
 */
import { MemoryDuplex, settle } from '../util/memory-tls.js';
import { connect, type ConnectionOptions, type TLSSocket } from 'node:tls';
import {
  EAP_TLS12_EXPORTER,
  EAP_TLS13_EXPORTER,
  NO_CONTEXT,
  EapCode,
  EapTlsFlag,
  EapTlsReassembler,
  EapType,
  decodeEap,
  decodeEapTls,
  eapTlsMskFrom,
  encodeEap,
  encodeEapTls,
  fragmentTls,
  type EapTlsFragment,
} from '../wire/eap.js';
import {
  MacAlg,
  PcpAuthOption,
  PcpAuthResult,
  Prf,
  appendAuthTag,
  appendPaAuthTag,
  decodePaMessage,
  deriveTransportKey,
  encodePaMessage,
  encodePcpAddress,
  findOption,
  readAuthTag,
  readPaAuthTagKeyId,
  u32,
  verifyAuthTag,
  verifyPaAuthTag,
  type PaMessage,
} from '../wire/pcp-auth.js';

export type PcpSend = (request: Buffer, expectReply: boolean) => Promise<Buffer | null>;

export interface PcpAuthClientOptions {
  clientAddress: string;
  cert: string | Buffer;
  key: string | Buffer;
  ca: string | Buffer;
  identity?: string;
  servername?: string;
  minVersion?: 'TLSv1.2' | 'TLSv1.3';
  maxVersion?: 'TLSv1.2' | 'TLSv1.3';
  /** Bound on PA round trips (default 64). */
  maxRounds?: number;
  /** EAP-TLS data octets per fragment (default 900, so a PA message fits 1100 octets). */
  fragmentSize?: number;
  now?: () => number;
}

export interface ClientSecurityAssociation {
  sessionId: number;
  keyId: number;
  /** Never log these two. */
  transportKey: Buffer;
  msk: Buffer;
  mac: number;
  prf: number;
  /** Seconds (SESSION_LIFETIME). */
  lifetime: number;
  expiresAt: number;
  /** When to authenticate again (80% of the lifetime), so the new SA exists before this one expires. */
  renewAt: number;
  tlsVersion: string;
}

export interface PcpAuthSession {
  readonly sa: ClientSecurityAssociation;
  tag(request: Buffer): Buffer;
  verify(response: Buffer): boolean;
  expired(): boolean;
  terminate(send: PcpSend): Promise<void>;
}

export class PcpAuthError extends Error {
  constructor(
    message: string,
    readonly result?: number,
  ) {
    super(message);
  }
}

// TLS over memory: src/util/memory-tls.ts (shared with the gateway's EAP-TLS server).

/** EAP peer for EAP-TLS (RFC 5216 §2.1; RFC 9190 §2.1 for TLS 1.3). */
export class EapTlsPeer {
  private duplex = new MemoryDuplex();
  private tls: TLSSocket | null = null;
  private secure = false;
  private committed = false;
  private failed = false;
  private outgoing: EapTlsFragment[] = [];
  private readonly reasm = new EapTlsReassembler(65536);

  constructor(private readonly o: PcpAuthClientOptions) {}

  private response(id: number, f: EapTlsFragment): Buffer {
    return encodeEap({ code: EapCode.Response, identifier: id, type: EapType.Tls, data: encodeEapTls(f) });
  }

  /** Answers one EAP Request; Success/Failure return null (nothing to answer, RFC 3748 §4.2). */
  async handle(eap: Buffer): Promise<Buffer | null> {
    const p = decodeEap(eap);
    if (!p) throw new PcpAuthError('malformed EAP packet');
    if (p.code === EapCode.Failure) throw new PcpAuthError('EAP-Failure', PcpAuthResult.AUTHENTICATION_FAILED);
    if (p.code === EapCode.Success) return null;
    if (p.code !== EapCode.Request) throw new PcpAuthError('unexpected EAP code');
    if (p.type === EapType.Identity) {
      return encodeEap({
        code: EapCode.Response,
        identifier: p.identifier,
        type: EapType.Identity,
        data: Buffer.from(this.o.identity ?? 'anonymous'),
      });
    }
    if (p.type !== EapType.Tls) {
      // RFC 3748 §5.3.1: Nak, desired method EAP-TLS.
      return encodeEap({ code: EapCode.Response, identifier: p.identifier, type: EapType.Nak, data: Buffer.from([EapType.Tls]) });
    }
    const f = decodeEapTls(p.data);
    if (!f) throw new PcpAuthError('malformed EAP-TLS');
    if (f.flags & EapTlsFlag.S) {
      this.startTls();
      await settle(this.duplex, () => this.failed);
      return this.sendFlight(p.identifier, this.duplex.takeOutput());
    }
    if (this.outgoing.length) {
      // RFC 5216 §3.1: the server acknowledged a fragment: send the next.
      return this.response(p.identifier, this.outgoing.shift()!);
    }
    const r = this.reasm.push(f);
    if (!r.done) {
      if (r.error) throw new PcpAuthError(`EAP-TLS: ${r.error}`);
      return this.response(p.identifier, { flags: 0, data: Buffer.alloc(0) });
    }
    if (!this.tls) throw new PcpAuthError('EAP-TLS data before Start');
    this.duplex.inject(r.data);
    await settle(this.duplex, () => this.failed || (this.secure && (this.committed || this.tls!.getProtocol() !== 'TLSv1.3')));
    if (this.failed) throw new PcpAuthError('TLS handshake with the EAP server failed', PcpAuthResult.AUTHENTICATION_FAILED);
    return this.sendFlight(p.identifier, this.duplex.takeOutput());
  }

  private sendFlight(id: number, data: Buffer): Buffer {
    if (!data.length) return this.response(id, { flags: 0, data: Buffer.alloc(0) });
    this.outgoing = fragmentTls(data, this.o.fragmentSize ?? 900);
    return this.response(id, this.outgoing.shift()!);
  }

  private startTls(): void {
    if (this.tls) throw new PcpAuthError('second EAP-TLS Start');
    const opts: ConnectionOptions = {
      socket: this.duplex,
      ca: this.o.ca,
      cert: this.o.cert,
      key: this.o.key,
      minVersion: this.o.minVersion ?? 'TLSv1.2',
      maxVersion: this.o.maxVersion ?? 'TLSv1.3',
      servername: this.o.servername,
      rejectUnauthorized: true,
    };
    // Without a name to check, the chain to the configured roots is what is verified.
    if (!this.o.servername) opts.checkServerIdentity = () => undefined;
    const tls = connect(opts);
    this.tls = tls;
    tls.on('secureConnect', () => (this.secure = true));
    tls.on('data', (d: Buffer) => {
      // RFC 9190 §2.5: the commitment message is one octet 0x00 of application data.
      if (d.includes(0)) this.committed = true;
    });
    tls.on('error', () => (this.failed = true));
  }

  get tlsVersion(): string {
    return this.tls?.getProtocol() ?? '';
  }

  /** RFC 5216 §2.3 / RFC 9190 §2.3 MSK, after the handshake. */
  msk(): Buffer {
    const tls = this.tls;
    if (!tls || !this.secure || !tls.authorized) throw new PcpAuthError('EAP-TLS handshake not complete');
    const km =
      tls.getProtocol() === 'TLSv1.3'
        ? tls.exportKeyingMaterial(EAP_TLS13_EXPORTER.length, EAP_TLS13_EXPORTER.label, EAP_TLS13_EXPORTER.context)
        : tls.exportKeyingMaterial(EAP_TLS12_EXPORTER.length, EAP_TLS12_EXPORTER.label, NO_CONTEXT);
    return eapTlsMskFrom(km);
  }

  close(): void {
    this.tls?.on('error', () => {});
    this.tls?.destroy();
    this.duplex.destroy();
  }
}

/** Runs PA-Initiation, the EAP exchange and completion (RFC 7652 §3, §4). */
export async function authenticate(send: PcpSend, o: PcpAuthClientOptions): Promise<PcpAuthSession> {
  const now = o.now ?? Date.now;
  const clientIp = encodePcpAddress(o.clientAddress);
  const peer = new EapTlsPeer(o);
  let seq = 0;
  const request = (resultCode: number, sessionId: number, options: { code: number; data: Buffer }[]) =>
    encodePaMessage({ response: false, resultCode, lifetime: 0, epoch: 0, clientIp, sessionId, sequence: seq, options });
  const exchange = async (msg: Buffer): Promise<PaMessage> => {
    const raw = await send(msg, true);
    const m = raw && decodePaMessage(raw);
    if (!m || !m.response) throw new PcpAuthError('no PA-Server answer');
    return m;
  };
  try {
    // RFC 7652 §4.1: PA-Initiation (result INITIATION, Session ID 0).
    let m = await exchange(request(PcpAuthResult.INITIATION, 0, []));
    const sessionId = m.sessionId;
    const nonce = findOption(m.options, PcpAuthOption.NONCE);
    if (!nonce || nonce.length !== 4) throw new PcpAuthError('PA-Server without NONCE', m.resultCode);
    // RFC 7652 §5.7/§5.8: the server lists what it supports; the client picks one of each.
    const offeredPrf = m.options
      .filter((x) => x.code === PcpAuthOption.PSEUDO_RANDOM_FUNCTION && x.data.length === 4)
      .map((x) => x.data.readUInt32BE(0));
    const offeredMac = m.options
      .filter((x) => x.code === PcpAuthOption.MAC_ALGORITHM && x.data.length === 4)
      .map((x) => x.data.readUInt32BE(0));
    const prf = [Prf.HMAC_SHA2_256, Prf.HMAC_SHA1].find((x) => offeredPrf.includes(x));
    const mac = [MacAlg.HMAC_SHA2_256_128, MacAlg.HMAC_SHA1_96].find((x) => offeredMac.includes(x));
    if (prf === undefined || mac === undefined) throw new PcpAuthError('no common PRF / MAC algorithm');
    let lastServerSeq = m.sequence;
    let first = true;
    for (let round = 0; round < (o.maxRounds ?? 64); round++) {
      if (m.sessionId !== sessionId) throw new PcpAuthError('PA-Server for another session');
      if (m.resultCode === PcpAuthResult.AUTHENTICATION_FAILED || m.resultCode === PcpAuthResult.AUTHORIZATION_FAILED) {
        throw new PcpAuthError('authentication failed', m.resultCode);
      }
      if (m.resultCode !== PcpAuthResult.AUTHENTICATION_REQUEST && m.resultCode !== PcpAuthResult.AUTHENTICATION_SUCCEEDED) {
        throw new PcpAuthError('unexpected PA-Server result', m.resultCode);
      }
      const eap = findOption(m.options, PcpAuthOption.EAP_PAYLOAD);
      if (!eap) throw new PcpAuthError('PA-Server without EAP_PAYLOAD');
      const answer = await peer.handle(eap);
      if (m.resultCode === PcpAuthResult.AUTHENTICATION_SUCCEEDED) {
        const ep = decodeEap(eap);
        if (!ep || ep.code !== EapCode.Success) throw new PcpAuthError('AUTHENTICATION_SUCCEEDED without EAP-Success');
        const msk = peer.msk();
        const keyId = readPaAuthTagKeyId(m.raw ?? Buffer.alloc(0));
        if (keyId === null) throw new PcpAuthError('AUTHENTICATION_SUCCEEDED without PA_AUTHENTICATION_TAG');
        const transportKey = deriveTransportKey(prf, msk, sessionId, nonce, keyId);
        // RFC 7652 §5.5: the final PA-Server message is protected with the new key.
        if (!verifyPaAuthTag(m.raw!, mac, transportKey)) throw new PcpAuthError('bad PA_AUTHENTICATION_TAG');
        // The algorithm lists repeated under the tag must be those first offered (downgrade check).
        const protPrf = m.options
          .filter((x) => x.code === PcpAuthOption.PSEUDO_RANDOM_FUNCTION && x.data.length === 4)
          .map((x) => x.data.readUInt32BE(0));
        const protMac = m.options
          .filter((x) => x.code === PcpAuthOption.MAC_ALGORITHM && x.data.length === 4)
          .map((x) => x.data.readUInt32BE(0));
        if ((protPrf.length || protMac.length) && (protPrf.join() !== offeredPrf.join() || protMac.join() !== offeredMac.join())) {
          throw new PcpAuthError('algorithm offer changed: downgrade attack', PcpAuthResult.DOWNGRADE_ATTACK_DETECTED);
        }
        const lifetimeOpt = findOption(m.options, PcpAuthOption.SESSION_LIFETIME);
        const lifetime = lifetimeOpt && lifetimeOpt.length === 4 ? lifetimeOpt.readUInt32BE(0) : m.lifetime;
        const sa: ClientSecurityAssociation = {
          sessionId,
          keyId,
          transportKey,
          msk,
          mac,
          prf,
          lifetime,
          expiresAt: now() + lifetime * 1000,
          renewAt: now() + lifetime * 800,
          tlsVersion: peer.tlsVersion,
        };
        // PA-Client AUTHENTICATION_SUCCEEDED acknowledging it (RECEIVED_PAK §5.10), tagged.
        seq++;
        const ack = appendPaAuthTag(
          request(PcpAuthResult.AUTHENTICATION_SUCCEEDED, sessionId, [{ code: PcpAuthOption.RECEIVED_PAK, data: u32(m.sequence) }]),
          {
            keyId,
            mac,
            key: transportKey,
          },
        );
        await send(ack, false);
        return makeSession(sa, now, clientIp);
      }
      if (!answer) throw new PcpAuthError('EAP peer has nothing to answer');
      seq++;
      const opts: { code: number; data: Buffer }[] = [
        { code: PcpAuthOption.EAP_PAYLOAD, data: answer },
        { code: PcpAuthOption.RECEIVED_PAK, data: u32(m.sequence) },
      ];
      if (first) {
        // RFC 7652 §4.1: the first PA-Client echoes the NONCE and names the chosen algorithms.
        opts.push(
          { code: PcpAuthOption.NONCE, data: nonce },
          { code: PcpAuthOption.PSEUDO_RANDOM_FUNCTION, data: u32(prf) },
          { code: PcpAuthOption.MAC_ALGORITHM, data: u32(mac) },
        );
        first = false;
      }
      m = await exchange(request(PcpAuthResult.AUTHENTICATION_REPLY, sessionId, opts));
      if (m.sequence <= lastServerSeq && m.resultCode !== PcpAuthResult.AUTHENTICATION_FAILED)
        throw new PcpAuthError('PA-Server sequence number went back');
      lastServerSeq = m.sequence;
    }
    throw new PcpAuthError('too many PA round trips');
  } finally {
    peer.close();
  }
}

function makeSession(sa: ClientSecurityAssociation, now: () => number, clientIp: Buffer): PcpAuthSession {
  let outSeq = 0;
  let inSeq = 0;
  return {
    sa,
    tag(req: Buffer): Buffer {
      outSeq = (outSeq + 1) >>> 0;
      return appendAuthTag(req, { sessionId: sa.sessionId, sequence: outSeq, keyId: sa.keyId, mac: sa.mac, key: sa.transportKey });
    },
    verify(resp: Buffer): boolean {
      const t = readAuthTag(resp);
      if (!t || t.sessionId !== sa.sessionId || t.keyId !== sa.keyId) return false;
      if (!verifyAuthTag(resp, sa.mac, sa.transportKey)) return false;
      // Replay protection: each incoming sequence number must be above the last accepted.
      if (t.sequence <= inSeq) return false;
      inSeq = t.sequence;
      return true;
    },
    expired(): boolean {
      return now() >= sa.expiresAt;
    },
    async terminate(send: PcpSend): Promise<void> {
      const msg = appendPaAuthTag(
        encodePaMessage({
          response: false,
          resultCode: PcpAuthResult.SESSION_TERMINATED,
          lifetime: 0,
          epoch: 0,
          clientIp,
          sessionId: sa.sessionId,
          sequence: 0xffffffff,
          options: [],
        }),
        { keyId: sa.keyId, mac: sa.mac, key: sa.transportKey },
      );
      await send(msg, false);
    },
  };
}
