/**
 * A small TURN client over UDP with long-term credentials (RFC 8489 §9.2, RFC 8656), for
 * the benches: Allocate, CreatePermission, ChannelBind, and ChannelData in and out. One
 * transaction at a time per client. Used by bench/turn-idle.ts (allocations held idle)
 * and by the latency probe of bench/turn-relay.ts.
 */
import { createSocket, type Socket } from 'node:dgram';
import { randomBytes } from 'node:crypto';
import {
  Attr,
  Class,
  Method,
  StunWriter,
  decodeStun,
  getAttr,
  getErrorCode,
  getString,
  longTermKey,
  messageType,
  type StunMessage,
} from '../../src/wire/stun.js';
import { HOST } from './ports.js';

// The long-term user both servers are started with (bench/turn-relay.ts).
export const USER = 'bench';
export const PASSWORD = 'bench';
/** RFC 8656 §7.1 LIFETIME asked for: both servers' default maximum, so nothing expires during a run. */
export const LIFETIME_S = 3600;
/** RFC 8489 §6.2.1: RTO 500 ms, doubled each time, Rc = 7 transmissions, the last waits Rm = 16 RTO. */
const RTO_MS = 500;
const RC = 7;
const RM = 16;

export interface Outcome {
  ok: boolean;
  /** the STUN error code, or 0 for a timeout */
  code: number;
}

export class TurnClient {
  private nonce: string | null = null;
  private realm: string | null = null;
  private passwordAlgorithms: Buffer | null = null;
  private waiting: { tid: Buffer; resolve: (m: StunMessage | null) => void } | null = null;
  /** ChannelData the server relayed to this client (channel number, application data). */
  onChannelData: ((channel: number, data: Buffer) => void) | null = null;

  constructor(readonly sock: Socket) {
    sock.on('message', (m) => {
      const w = this.waiting;
      // RFC 8656 §12.4: a first byte 0x40-0x4F is ChannelData, not STUN.
      if (m.length >= 4 && (m[0]! & 0xc0) === 0x40) {
        this.onChannelData?.(m.readUInt16BE(0), m.subarray(4, 4 + m.readUInt16BE(2)));
        return;
      }
      // RFC 8489 §6.3: a response is matched to its request by the transaction ID.
      if (!w || m.length < 20 || !m.subarray(8, 20).equals(w.tid)) return;
      const msg = decodeStun(m);
      if (!msg || msg.cls === Class.Request || msg.cls === Class.Indication) return;
      this.waiting = null;
      w.resolve(msg);
    });
  }

  /** One transaction with RFC 8489 §6.2.1 retransmissions (same transaction ID); null on timeout. */
  private transact(req: Buffer, port: number): Promise<StunMessage | null> {
    return new Promise((done) => {
      let sent = 0;
      let timer: NodeJS.Timeout | null = null;
      const send = (): void => {
        sent++;
        this.sock.send(req, port, HOST);
        const wait = sent < RC ? RTO_MS * 2 ** (sent - 1) : RTO_MS * RM;
        timer = setTimeout(() => (sent < RC ? send() : finish(null)), wait);
      };
      const finish = (m: StunMessage | null): void => {
        if (timer) clearTimeout(timer);
        this.waiting = null;
        done(m);
      };
      this.waiting = { tid: req.subarray(8, 20), resolve: finish };
      send();
    });
  }

  private build(method: number, body: (w: StunWriter) => void): Buffer {
    const w = new StunWriter();
    w.reset(messageType(method, Class.Request), randomBytes(12));
    body(w);
    if (this.nonce !== null && this.realm !== null) {
      // RFC 8489 §9.2.3: USERNAME, REALM, NONCE, then MESSAGE-INTEGRITY over the long-term key.
      w.attr(Attr.Username, USER);
      w.attr(Attr.Realm, this.realm);
      w.attr(Attr.Nonce, this.nonce);
      if (this.passwordAlgorithms) {
        // RFC 8489 §9.2.4: the list the server offered, echoed, and the algorithm chosen (MD5).
        w.attr(Attr.PasswordAlgorithms, this.passwordAlgorithms);
        w.attr(Attr.PasswordAlgorithm, Buffer.from([0, 1, 0, 0]));
      }
      w.integrity(longTermKey(USER, this.realm, PASSWORD, 'md5'));
    }
    return w.copy();
  }

  /**
   * An authenticated request: sent with the credentials known so far; a 401 (RFC 8489
   * §9.2.5, the first challenge) or a 438 (stale nonce) gives the realm and nonce for one
   * more try.
   */
  async request(method: number, port: number, body: (w: StunWriter) => void): Promise<Outcome> {
    for (let attempt = 0; attempt < 3; attempt++) {
      const r = await this.transact(this.build(method, body), port);
      if (!r) return { ok: false, code: 0 };
      if (r.cls === Class.Success) return { ok: true, code: 0 };
      const code = getErrorCode(r)?.code ?? 500;
      const challenged = (code === 401 && this.nonce === null) || code === 438;
      if (!challenged) return { ok: false, code };
      this.nonce = getString(r, Attr.Nonce) ?? null;
      this.realm = getString(r, Attr.Realm) ?? this.realm;
      this.passwordAlgorithms = getAttr(r, Attr.PasswordAlgorithms) ?? null;
      if (this.nonce === null || this.realm === null) return { ok: false, code };
    }
    return { ok: false, code: 401 };
  }

  /** RFC 8656 §7.1: Allocate with REQUESTED-TRANSPORT UDP and a LIFETIME. */
  allocate(port: number): Promise<Outcome> {
    return this.request(Method.Allocate, port, (w) => {
      w.u32(Attr.RequestedTransport, 17 << 24);
      w.u32(Attr.Lifetime, LIFETIME_S);
    });
  }

  /** RFC 8656 §9.1: one permission for a peer address on loopback (nothing is sent to it). */
  permit(port: number, peerPort: number): Promise<Outcome> {
    return this.request(Method.CreatePermission, port, (w) => w.xorAddress(Attr.XorPeerAddress, HOST, peerPort));
  }

  /** RFC 8656 §11.1: ChannelBind of `channel` (0x4000-0x4FFF, §12) to a loopback peer. */
  channelBind(port: number, channel: number, peerPort: number): Promise<Outcome> {
    return this.request(Method.ChannelBind, port, (w) => {
      // RFC 8656 §14.1: CHANNEL-NUMBER is the number in the high 16 bits, RFFU zero.
      w.u32(Attr.ChannelNumber, channel << 16);
      w.xorAddress(Attr.XorPeerAddress, HOST, peerPort);
    });
  }
}

/** A ChannelData message (RFC 8656 §12.4): channel number, length, data; UDP needs no padding. */
export function channelData(channel: number, data: Buffer): Buffer {
  const out = Buffer.allocUnsafe(4 + data.length);
  out.writeUInt16BE(channel, 0);
  out.writeUInt16BE(data.length, 2);
  data.copy(out, 4);
  return out;
}

/** A client socket bound to an ephemeral loopback port, wrapped. */
export async function openTurnClient(): Promise<TurnClient> {
  const s = createSocket('udp4');
  await new Promise<void>((r, j) => {
    s.once('error', j);
    s.bind(0, HOST, () => r());
  });
  s.on('error', () => {});
  return new TurnClient(s);
}
