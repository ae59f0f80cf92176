/**
 * What a relayed datagram is, for the fail-closed guard (issue 8; key-escrow.md §5.1).
 *
 * On a flow whose keys are required, before keys verify, only what a WebRTC connection
 * needs to get there passes: STUN Binding between the peers (ICE connectivity checks,
 * RFC 8445 §7.2; consent freshness, RFC 7675 §5.1) and the records of a plausible DTLS
 * handshake (RFC 6347 §4.2, RFC 9147 §5), each within a budget (below). Everything else
 * is *uninspected*. classify() parses headers only, never allocates and never throws.
 *
 * Budgets (per flow; the why is next to each constant). The figures behind them: one DTLS
 * 1.2 handshake as WebRTC runs it (mutual authentication, RFC 8827 §6.5) with a 2 KB
 * certificate on each side is about 6 KB both ways: ClientHello 200-500 B (Chromium
 * ~250, Firefox ~450), HelloVerifyRequest ~60 B (OpenSSL), ServerHello ~100 B, Certificate
 * 400-600 B for the ECDSA self-signed certificates browsers make (1-2 KB for an RSA-2048
 * OpenSSL certificate), ServerKeyExchange 150-300 B, CertificateRequest ~50 B,
 * ServerHelloDone 25 B, ClientKeyExchange ~80 B, CertificateVerify 80-300 B,
 * change_cipher_spec 14 B, Finished ~60 B, NewSessionTicket ~200 B (OpenSSL).
 * Retransmission (RFC 6347 §4.2.4.1: timer from 1 s, doubling) resends whole flights.
 */
import { classifyByte, PC_CHANNELDATA, PC_DTLS, PC_RTP, PC_STUN, PC_ZRTP } from '../wire/demux.js';

/**
 * Handshake bytes (DTLS records of the handshake, both directions, record headers
 * included) a flow may forward before keys verify: ten times the ~6 KB handshake above,
 * i.e. the handshake and up to nine retransmissions of its large flights (a peer that
 * loses packets for 8 s of doubling timers from 50 ms), or one with 4 KB certificate chains
 * and four. Reset when keys verify (a renegotiation gets a fresh budget; ClientHellos are
 * bounded by their own budget).
 */
export const HANDSHAKE_BYTES_BUDGET = 64 * 1024;
/**
 * ClientHello messages (first fragments) a flow may forward: 2 per handshake with a
 * cookie exchange (RFC 6347 §4.2.1), each retransmitted up to ~6 times over a 60 s
 * backoff (RFC 6347 §4.2.4.1), and room for one renegotiation.
 */
export const CLIENT_HELLO_BUDGET = 16;
/**
 * Largest handshake message (RFC 6347 §4.2.2 `length`) taken as plausible: the gateway's
 * DTLS reassembler bound (16 KiB, src/inspect/dtls-session.ts) and four times a 4 KB
 * certificate chain.
 */
export const HANDSHAKE_MESSAGE_MAX = 16 * 1024;
/**
 * Largest encrypted change_cipher_spec or alert record (epoch >= 1, a renegotiation's or
 * the closing alert): 2 bytes of alert (RFC 5246 §7.2) plus the biggest record overhead
 * of the key-escrow.md §3 suites: CBC explicit IV 16 + HMAC-SHA384 48 + padding to the
 * block (RFC 5246 §6.2.3.2); AEAD is 8 + 16 (RFC 5288 §3) or 16 (RFC 7905).
 */
export const ENCRYPTED_CONTROL_MAX = 128;
/**
 * Largest STUN message passed between peers: RFC 8489 §6.1's 576-byte IPv4 datagram for
 * an unknown path MTU minus IP (20) and UDP (8) headers. An ICE check (RFC 8445 §7.2.2:
 * USERNAME, PRIORITY, ICE-CONTROLLING/-CONTROLLED, USE-CANDIDATE, MESSAGE-INTEGRITY,
 * FINGERPRINT) from a browser is 90-150 bytes.
 */
export const STUN_MESSAGE_MAX = 548;
/**
 * STUN Binding bytes between the peers: a token bucket of this many bytes, refilled at
 * STUN_REFILL_BYTES_PER_S. ICE checking (Chromium pings a weak pair every 48 ms, and the
 * peer does the same, each check answered) is ~85 messages/s of ~100 B per flow at worst:
 * the bucket lasts ~20 s of that; afterwards consent checks every 4-6 s (RFC 7675 §5.1)
 * and Chromium's 2.5 s pings of a stable pair need ~1 KB/s.
 */
export const STUN_BUCKET_BYTES = 128 * 1024;
export const STUN_REFILL_BYTES_PER_S = 2 * 1024;
/**
 * Uninspected datagrams a required flow may be sent before it is blocked (they are
 * never forwarded): a real WebRTC peer sends none; a few stray ones are tolerated.
 */
export const UNINSPECTED_PACKETS_BUDGET = 32;

/** What classify() found. */
export const K_EMPTY = 0; // an empty datagram: nothing to inspect or to leak
export const K_STUN = 1; // STUN Binding (ICE check, consent), sane header
export const K_CONTROL = 2; // every record is a plausible handshake / CCS / alert / ACK record
export const K_PROTECTED = 3; // DTLS application data (epoch >= 1 or DTLS 1.3 epoch != 2) or SRTP/SRTCP: keys can make it inspectable
export const K_UNINSPECTED = 4; // nothing can inspect it (reason in Classified.reason)
export type Kind = 0 | 1 | 2 | 3 | 4;

/** Why a datagram is uninspected (index into UNINSPECTED_REASONS). */
export const UNINSPECTED_REASONS = [
  'stun_method', // STUN of a method other than Binding (RFC 8489 §18.2): not needed between peers
  'stun_malformed', // first byte 0..3 but not a STUN header (RFC 8489 §5: cookie, length)
  'stun_oversize', // over STUN_MESSAGE_MAX
  'dtls_malformed', // a record that does not parse (RFC 6347 §4.1 / RFC 9147 §4)
  'dtls_plaintext_appdata', // application_data at epoch 0 (RFC 5246 §7.1: never without keys)
  'dtls_content_type', // heartbeat (RFC 6520), unknown types, or a type not valid at its epoch
  'dtls_cid', // RFC 9146 connection IDs: out of scope (key-escrow.md), cannot be delimited
  'dtls_handshake_malformed', // an epoch-0 handshake record whose messages do not parse as a handshake
  'dtls_control_size', // CCS / alert of a size RFC 5246 §7.1 / §7.2 does not allow
  'rtp_malformed', // first byte 128..191 but shorter than an RTP/RTCP header (RFC 3550 §5.1, §6.4.1)
  'zrtp', // RFC 7983 §7 [16..19]: not used by WebRTC
  'channeldata', // RFC 7983 §7 [64..79]: TURN framing inside a flow
  'other', // RFC 7983 §7: a first byte no WebRTC protocol uses (MUST be dropped)
  'budget', // over a handshake / STUN budget (where keys are not required it goes on uninspected)
  'no_keys', // inspectable data forwarded without keys (deadline passed, keys not required)
  'dtls_unauthenticated', // a protected record the flow's keys do not authenticate (tampered, foreign epoch, another association)
  'srtp_unauthenticated', // SRTP/SRTCP the flow's keys do not authenticate (RFC 3711 §3.4 / RFC 7714 §9.3)
] as const;
export type UninspectedReason = (typeof UNINSPECTED_REASONS)[number];
export const R_STUN_METHOD = 0;
export const R_STUN_MALFORMED = 1;
export const R_STUN_OVERSIZE = 2;
export const R_DTLS_MALFORMED = 3;
export const R_DTLS_PLAINTEXT_APPDATA = 4;
export const R_DTLS_CONTENT_TYPE = 5;
export const R_DTLS_CID = 6;
export const R_DTLS_HANDSHAKE_MALFORMED = 7;
export const R_DTLS_CONTROL_SIZE = 8;
export const R_RTP_MALFORMED = 9;
export const R_ZRTP = 10;
export const R_CHANNELDATA = 11;
export const R_OTHER = 12;
export const R_BUDGET = 13;
export const R_NO_KEYS = 14;
export const R_DTLS_UNAUTHENTICATED = 15;
export const R_SRTP_UNAUTHENTICATED = 16;

/** Filled by classify() (one per guard, reused: no allocation per packet). */
export interface Classified {
  kind: Kind;
  reason: number;
  /** K_CONTROL: bytes of handshake-class records (counted against HANDSHAKE_BYTES_BUDGET). */
  handshakeBytes: number;
  /** K_CONTROL: ClientHello first fragments in the datagram. */
  clientHellos: number;
  /** Some record is protected (DTLS epoch >= 1 or a unified header): the handshake is completing. */
  protectedSeen: boolean;
}

export function newClassified(): Classified {
  return { kind: K_EMPTY, reason: 0, handshakeBytes: 0, clientHellos: 0, protectedSeen: false };
}

const MAGIC_COOKIE = 0x2112a442;
const DTLS_HDR = 13; // RFC 6347 §4.1: type(1) version(2) epoch(2) seq(6) length(2)
const HS_HDR = 12; // RFC 6347 §4.2.2: msg_type(1) length(3) message_seq(2) fragment_offset(3) fragment_length(3)
const MAX_PLAINTEXT = 16384; // RFC 6347 §4.1 / RFC 5246 §6.2.1: DTLSPlaintext.length <= 2^14
const MAX_CIPHERTEXT = 16384 + 2048; // RFC 5246 §6.2.3
// DTLS content types (RFC 6347 §4.1, RFC 9147 §7 ACK).
const CT_CCS = 20;
const CT_ALERT = 21;
const CT_HANDSHAKE = 22;
const CT_APP = 23;
const CT_CID = 25;
const CT_ACK = 26;

/**
 * Handshake types plausible in an epoch-0 record (RFC 5246 §7.4, RFC 6347 §4.2, RFC 8446
 * §4 for DTLS 1.3's plaintext ClientHello/ServerHello): everything before the first
 * change_cipher_spec. HelloRequest (0) and Finished (20) are never plaintext in a first
 * handshake; EncryptedExtensions (8) is always encrypted.
 */
function plaintextHandshakeType(t: number): boolean {
  return (
    t === 1 || // client_hello
    t === 2 || // server_hello (and DTLS 1.3 HelloRetryRequest, RFC 8446 §4.1.4)
    t === 3 || // hello_verify_request (RFC 6347 §4.2.1)
    t === 4 || // new_session_ticket (RFC 5077 §3.3: before the server's CCS)
    t === 11 || // certificate
    t === 12 || // server_key_exchange
    t === 13 || // certificate_request
    t === 14 || // server_hello_done
    t === 15 || // certificate_verify
    t === 16 || // client_key_exchange
    t === 22 // certificate_status (RFC 6066 §8)
  );
}

/**
 * RFC 6347 §4.2.2: the messages of an epoch-0 handshake record parse as a handshake:
 * known types, fragment within the message, message within HANDSHAKE_MESSAGE_MAX, the
 * hellos' first two body bytes a DTLS version (RFC 6347 §4.2.1: 0xfeff/0xfefd; RFC 9147
 * §5.3 legacy_version 0xfefd). Returns the ClientHello count, or -1.
 */
function plausibleHandshake(d: Buffer, off: number, end: number): number {
  let hellos = 0;
  if (off === end) return -1;
  while (off < end) {
    if (off + HS_HDR > end) return -1;
    const t = d[off]!;
    if (!plaintextHandshakeType(t)) return -1;
    const length = (d[off + 1]! << 16) | (d[off + 2]! << 8) | d[off + 3]!;
    const fragOff = (d[off + 6]! << 16) | (d[off + 7]! << 8) | d[off + 8]!;
    const fragLen = (d[off + 9]! << 16) | (d[off + 10]! << 8) | d[off + 11]!;
    if (length > HANDSHAKE_MESSAGE_MAX || fragOff + fragLen > length) return -1;
    const body = off + HS_HDR;
    if (body + fragLen > end) return -1;
    // RFC 5246 §7.4.5: ServerHelloDone is empty.
    if (t === 14 && length !== 0) return -1;
    if (t !== 14 && length === 0) return -1;
    if ((t === 1 || t === 2 || t === 3) && fragOff === 0) {
      if (fragLen < 2) return -1;
      const v = (d[body]! << 8) | d[body + 1]!;
      if (v !== 0xfeff && v !== 0xfefd) return -1;
      if (t === 1) hellos++;
    }
    off = body + fragLen;
  }
  return hellos;
}

function uninspected(out: Classified, reason: number): Classified {
  out.kind = K_UNINSPECTED;
  out.reason = reason;
  return out;
}

/** Classifies a STUN-range datagram (RFC 8489 §5 header; RFC 8445 §7.2 Binding only). */
function classifyStun(d: Buffer, out: Classified): Classified {
  if (d.length < 20) return uninspected(out, R_STUN_MALFORMED);
  const type = (d[0]! << 8) | d[1]!;
  const len = (d[2]! << 8) | d[3]!;
  // RFC 8489 §5: top two bits zero, length = the attributes' bytes (a multiple of 4), cookie.
  if (type & 0xc000 || len !== d.length - 20 || len & 3 || d.readUInt32BE(4) !== MAGIC_COOKIE) return uninspected(out, R_STUN_MALFORMED);
  // RFC 8489 §5: method bits M0-M11 around the class bits C0 (bit 4) and C1 (bit 8).
  const method = ((type & 0x3e00) >> 2) | ((type & 0x00e0) >> 1) | (type & 0x000f);
  if (method !== 0x001) return uninspected(out, R_STUN_METHOD); // Binding (RFC 8489 §18.2); any class
  if (d.length > STUN_MESSAGE_MAX) return uninspected(out, R_STUN_OVERSIZE);
  out.kind = K_STUN;
  return out;
}

/** Classifies a DTLS-range datagram record by record (RFC 6347 §4.1, RFC 9147 §4). */
function classifyDtls(d: Buffer, out: Classified): Classified {
  let off = 0;
  let prot = false;
  let hs = 0;
  let hellos = 0;
  while (off < d.length) {
    const t = d[off]!;
    if ((t & 0xe0) === 0x20) {
      // RFC 9147 §4 unified header 001CSLEE: always protected. C: a CID of unknown length.
      out.protectedSeen = true;
      if (t & 0x10) return uninspected(out, R_DTLS_CID);
      let p = off + 1 + (t & 0x08 ? 2 : 1); // S: 16- or 8-bit sequence number
      let end = d.length; // L clear: the record runs to the end of the datagram
      if (t & 0x04) {
        if (p + 2 > d.length) return uninspected(out, R_DTLS_MALFORMED);
        const len = (d[p]! << 8) | d[p + 1]!;
        p += 2;
        end = p + len;
        if (end > d.length || len > MAX_CIPHERTEXT) return uninspected(out, R_DTLS_MALFORMED);
      } else if (p > d.length) return uninspected(out, R_DTLS_MALFORMED);
      // RFC 9147 §6.1: epoch 2 carries the encrypted handshake (EncryptedExtensions ..
      // Finished, ACKs): handshake, within the budget. Others (1: 0-RTT, 3+: application
      // data, after key updates the low bits wrap) need keys.
      if ((t & 0x03) === 2) hs += end - off;
      else prot = true;
      off = end;
      continue;
    }
    if (t === CT_CID) return uninspected(out, R_DTLS_CID); // RFC 9146 §4 tls12_cid
    if (off + DTLS_HDR > d.length) return uninspected(out, R_DTLS_MALFORMED);
    // RFC 6347 §4.1: version 254.255 (DTLS 1.0) or 254.253 (DTLS 1.2; RFC 9147 §5.1 legacy).
    const ver = (d[off + 1]! << 8) | d[off + 2]!;
    if (ver !== 0xfeff && ver !== 0xfefd) return uninspected(out, R_DTLS_MALFORMED);
    const epoch = (d[off + 3]! << 8) | d[off + 4]!;
    const len = (d[off + 11]! << 8) | d[off + 12]!;
    const body = off + DTLS_HDR;
    const end = body + len;
    if (end > d.length) return uninspected(out, R_DTLS_MALFORMED);
    if (epoch === 0) {
      if (len > MAX_PLAINTEXT) return uninspected(out, R_DTLS_MALFORMED);
      if (t === CT_HANDSHAKE) {
        const n = plausibleHandshake(d, body, end);
        if (n < 0) return uninspected(out, R_DTLS_HANDSHAKE_MALFORMED);
        hellos += n;
        hs += end - off;
      } else if (t === CT_CCS) {
        // RFC 5246 §7.1: ChangeCipherSpec is one byte, value 1.
        if (len !== 1 || d[body] !== 1) return uninspected(out, R_DTLS_CONTROL_SIZE);
        hs += end - off;
      } else if (t === CT_ALERT) {
        // RFC 5246 §7.2: level (1 warning, 2 fatal) and description: 2 bytes.
        if (len !== 2 || (d[body] !== 1 && d[body] !== 2)) return uninspected(out, R_DTLS_CONTROL_SIZE);
        hs += end - off;
      } else if (t === CT_ACK) {
        // RFC 9147 §7: ACK = record_numbers<0..2^16-1> of 16-byte RecordNumbers.
        if (len < 2 || ((d[body]! << 8) | d[body + 1]!) !== len - 2 || (len - 2) % 16 !== 0) return uninspected(out, R_DTLS_MALFORMED);
        hs += end - off;
      } else if (t === CT_APP) {
        return uninspected(out, R_DTLS_PLAINTEXT_APPDATA); // RFC 5246 §7.1: keys come first
      } else return uninspected(out, R_DTLS_CONTENT_TYPE); // heartbeat (RFC 6520), unassigned
    } else {
      out.protectedSeen = true;
      if (len > MAX_CIPHERTEXT) return uninspected(out, R_DTLS_MALFORMED);
      if (t === CT_APP) prot = true;
      else if (t === CT_HANDSHAKE)
        hs += end - off; // Finished (RFC 5246 §7.4.9), or a renegotiation: handshake, within the budget
      else if (t === CT_CCS || t === CT_ALERT) {
        if (len > ENCRYPTED_CONTROL_MAX) return uninspected(out, R_DTLS_CONTROL_SIZE);
        hs += end - off;
      } else return uninspected(out, R_DTLS_CONTENT_TYPE);
    }
    off = end;
  }
  if (prot) {
    out.kind = K_PROTECTED;
    return out;
  }
  out.kind = K_CONTROL;
  out.handshakeBytes = hs;
  out.clientHellos = hellos;
  return out;
}

/** Classifies one relayed datagram into `out` (RFC 7983 §7 first byte, then the protocol's header). */
export function classify(d: Buffer, out: Classified): Classified {
  out.kind = K_EMPTY;
  out.reason = 0;
  out.handshakeBytes = 0;
  out.clientHellos = 0;
  out.protectedSeen = false;
  if (d.length === 0) return out;
  switch (classifyByte(d[0]!)) {
    case PC_STUN:
      return classifyStun(d, out);
    case PC_DTLS:
      return classifyDtls(d, out);
    case PC_RTP:
      // RFC 3550 §5.1: the fixed RTP header is 12 bytes; an SRTCP packet (RFC 3711 §3.4)
      // is at least the 8-byte RTCP header plus the 4-byte index.
      if (d.length < 12) return uninspected(out, R_RTP_MALFORMED);
      out.kind = K_PROTECTED;
      out.protectedSeen = true;
      return out;
    case PC_ZRTP:
      return uninspected(out, R_ZRTP);
    case PC_CHANNELDATA:
      return uninspected(out, R_CHANNELDATA);
    default:
      return uninspected(out, R_OTHER);
  }
}

/** Whether the datagram is media (RFC 7983 §7 [128..191]); classify() said K_PROTECTED. */
export function isMedia(d: Buffer): boolean {
  return d.length > 0 && classifyByte(d[0]!) === PC_RTP;
}
