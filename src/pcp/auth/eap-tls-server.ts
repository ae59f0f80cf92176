/**
 * The built-in EAP server: EAP-TLS (RFC 5216 for TLS 1.2, RFC 9190 for TLS 1.3) with the
 * gateway's certificate, client certificates required and verified against the configured
 * CA roots. node:tls runs over memory (src/util/memory-tls.ts); the MSK comes from the TLS exporter:
 *   TLS 1.2: RFC 5216 §2.3 Key_Material = TLS-PRF-128(master_secret, "client EAP encryption",
 *            client.random || server.random) = RFC 5705 exporter without context, 128 octets;
 *   TLS 1.3: RFC 9190 §2.3 Key_Material = TLS-Exporter("EXPORTER_EAP_TLS_Key_Material",
 *            Type-Code 0x0D, 128);
 *   MSK = Key_Material(0, 63) in both.
 * TLS 1.3: after the handshake the server sends the commitment message, one octet 0x00 of
 * application data (RFC 9190 §2.5), so the peer knows no more handshake messages follow.
 */
import { createSecureContext, TLSSocket, type SecureContext } from 'node:tls';
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
} from '../../wire/eap.js';
import type { EapBackend, EapSession, EapStep } from './backend.js';
import { MemoryDuplex, settle } from '../../util/memory-tls.js';

export interface EapTlsServerOptions {
  /** PEM CA roots that client certificates must chain to. */
  ca: string | Buffer;
  /** PEM server certificate (chain) and key. */
  cert: string | Buffer;
  key: string | Buffer;
  minVersion?: 'TLSv1.2' | 'TLSv1.3';
  maxVersion?: 'TLSv1.2' | 'TLSv1.3';
  /** EAP-TLS data octets per fragment (default 900: an EAP_PAYLOAD must fit a 1100-octet PCP message, RFC 6887 §7). */
  fragmentSize?: number;
  /** Bound on a reassembled TLS message from the peer (default 64 KiB). */
  maxMessage?: number;
  /** Bound on the handshake's EAP round trips (default 64). */
  maxRounds?: number;
}

export class EapTlsServer implements EapBackend {
  readonly name = 'eap-tls';
  private readonly ctx: SecureContext;

  constructor(private readonly opts: EapTlsServerOptions) {
    this.ctx = createSecureContext({
      ca: opts.ca,
      cert: opts.cert,
      key: opts.key,
      minVersion: opts.minVersion ?? 'TLSv1.2',
      maxVersion: opts.maxVersion ?? 'TLSv1.3',
    });
  }

  open(): EapSession {
    return new EapTlsServerSession(this.ctx, this.opts);
  }
}

type State = 'identity' | 'start' | 'handshake' | 'final' | 'done';

class EapTlsServerSession implements EapSession {
  private id = Math.floor(Math.random() * 256);
  private state: State = 'identity';
  private identity = '';
  private duplex = new MemoryDuplex();
  private tls: TLSSocket | null = null;
  private secure = false;
  private failed: string | null = null;
  private outgoing: EapTlsFragment[] = [];
  private readonly reasm: EapTlsReassembler;
  private rounds = 0;
  private readonly frag: number;

  constructor(
    private readonly ctx: SecureContext,
    private readonly opts: EapTlsServerOptions,
  ) {
    this.reasm = new EapTlsReassembler(opts.maxMessage ?? 65536);
    this.frag = opts.fragmentSize ?? 900;
  }

  firstRequest(): Buffer {
    // RFC 3748 §5.1: Request/Identity.
    return encodeEap({ code: EapCode.Request, identifier: this.id, type: EapType.Identity, data: Buffer.alloc(0) });
  }

  private request(f: EapTlsFragment): Buffer {
    this.id = (this.id + 1) & 0xff;
    return encodeEap({ code: EapCode.Request, identifier: this.id, type: EapType.Tls, data: encodeEapTls(f) });
  }

  private fail(reason: string): EapStep {
    this.state = 'done';
    this.close();
    // RFC 3748 §4.2: Success/Failure carry the Identifier of the Response they answer.
    return { eap: encodeEap({ code: EapCode.Failure, identifier: this.id, data: Buffer.alloc(0) }), outcome: { ok: false, reason } };
  }

  private sendFlight(data: Buffer): EapStep {
    this.outgoing = fragmentTls(data, this.frag);
    return { eap: this.request(this.outgoing.shift()!) };
  }

  async step(response: Buffer): Promise<EapStep> {
    const p = decodeEap(response);
    // RFC 3748 §4.1: a Response whose Identifier does not match the outstanding Request is discarded.
    if (!p || p.code !== EapCode.Response || p.identifier !== this.id || this.state === 'done') return { eap: null };
    if (++this.rounds > (this.opts.maxRounds ?? 64)) return this.fail('too many EAP rounds');
    if (p.type === EapType.Nak) return this.fail('peer refused EAP-TLS (Nak)');
    if (this.state === 'identity') {
      if (p.type !== EapType.Identity) return this.fail('expected Response/Identity');
      this.identity = p.data.subarray(0, 253).toString('utf8');
      this.state = 'start';
      // RFC 5216 §3.1 / §2.1.1: EAP-TLS Start (S flag, no data).
      return { eap: this.request({ flags: EapTlsFlag.S, data: Buffer.alloc(0) }) };
    }
    if (p.type !== EapType.Tls) return this.fail('expected EAP-TLS');
    const f = decodeEapTls(p.data);
    if (!f) return this.fail('malformed EAP-TLS');
    if (this.outgoing.length) {
      // RFC 5216 §3.1: the peer acknowledges each fragment with an empty EAP-TLS Response.
      if (f.data.length || f.flags & EapTlsFlag.M) return this.fail('expected a fragment acknowledgement');
      return { eap: this.request(this.outgoing.shift()!) };
    }
    if (this.state === 'final') {
      // The peer acknowledged our last flight (RFC 5216 §2.1.1: then EAP-Success).
      if (f.data.length) return this.fail('unexpected TLS data after the handshake');
      return this.succeed();
    }
    const r = this.reasm.push(f);
    if (!r.done) {
      if (r.error) return this.fail(r.error);
      // RFC 5216 §3.1: acknowledge a fragment with an EAP-TLS Request without data.
      return { eap: this.request({ flags: 0, data: Buffer.alloc(0) }) };
    }
    if (!this.tls) this.startTls();
    this.duplex.inject(r.data);
    await settle(this.duplex, () => this.secure || this.failed !== null);
    const out = this.duplex.takeOutput();
    if (this.failed) {
      return this.fail('TLS handshake failed');
    }
    if (this.secure) {
      if (!this.peerVerified()) return this.fail('client certificate not verified');
      this.state = 'final';
      if (!out.length) return this.succeed();
    }
    if (!out.length) return this.fail('TLS produced nothing to send');
    return this.sendFlight(out);
  }

  private startTls(): void {
    this.state = 'handshake';
    const tls = new TLSSocket(this.duplex as never, {
      isServer: true,
      secureContext: this.ctx,
      requestCert: true,
      rejectUnauthorized: true,
    });
    this.tls = tls;
    tls.on('secure', () => {
      this.secure = true;
      // RFC 9190 §2.5: TLS 1.3 commitment message, one octet 0x00 of application data.
      if (tls.getProtocol() === 'TLSv1.3') tls.write(Buffer.from([0]));
    });
    tls.on('error', () => {
      this.failed = 'tls';
    });
    tls.on('data', () => {
      /* EAP-TLS carries no application data from the peer */
    });
  }

  /**
   * A TLSSocket made outside tls.Server does not set `authorized` (node's server does that
   * in its own 'secure' listener): ask OpenSSL for the verification result of the chain
   * against the configured roots, as tls.Server does (RFC 5216 §5.3: the server MUST
   * validate the peer's certificate).
   */
  private peerVerified(): boolean {
    const tls = this.tls!;
    const handle = (tls as unknown as { _handle?: { verifyError?: () => Error | null } })._handle;
    if (!handle?.verifyError) return false;
    const cert = tls.getPeerCertificate();
    if (!cert || !cert.raw) return false;
    return handle.verifyError() === null;
  }

  private succeed(): EapStep {
    const tls = this.tls!;
    let msk: Buffer;
    try {
      const km =
        tls.getProtocol() === 'TLSv1.3'
          ? tls.exportKeyingMaterial(EAP_TLS13_EXPORTER.length, EAP_TLS13_EXPORTER.label, EAP_TLS13_EXPORTER.context)
          : tls.exportKeyingMaterial(EAP_TLS12_EXPORTER.length, EAP_TLS12_EXPORTER.label, NO_CONTEXT);
      msk = eapTlsMskFrom(km);
    } catch {
      return this.fail('no keying material');
    }
    const cert = tls.getPeerCertificate();
    const cn = cert?.subject?.CN;
    const ou = cert?.subject?.OU;
    const identity = (Array.isArray(cn) ? cn[0] : cn) || this.identity;
    const groups = ou ? (Array.isArray(ou) ? ou : [ou]) : [];
    this.state = 'done';
    this.close();
    return {
      eap: encodeEap({ code: EapCode.Success, identifier: this.id, data: Buffer.alloc(0) }),
      outcome: { ok: true, msk, identity, groups },
    };
  }

  close(): void {
    this.reasm.reset();
    this.outgoing = [];
    if (this.tls) {
      this.tls.removeAllListeners('secure');
      this.tls.on('error', () => {});
      this.tls.destroy();
    }
    this.duplex.destroy();
  }
}
