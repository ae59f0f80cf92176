/**
 * Synthetic WebRTC sessions for the pipeline, capture and fuzz tests (not a test file):
 * a DTLS 1.2 AES-128-GCM association with use_srtp, whose hellos are plaintext records
 * and whose application data (SCTP with DCEP + data channel messages, or plain bytes)
 * and SRTP packets are protected with random keys given back as a key set.
 */
import { randomBytes } from 'node:crypto';
import { DtlsRecordEncryptor } from '../../../src/wire/dtls-crypto.js';
import { encodeSctpPacket, encodeDataChunk, encodeInitChunk } from '../../../src/wire/sctp.js';
import { encodeDcepOpen } from '../../../src/wire/dcep.js';
import { SrtpContext } from '../../../src/wire/srtp.js';
import { serializeRtp } from '../../../src/wire/rtp.js';
import type { KeySet } from '../../../src/wire/keyset.js';

const SUITE = 0xc02b; // TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
const DTLS12 = 0xfefd;

function handshake(type: number, seq: number, body: Buffer): Buffer {
  // RFC 6347 §4.2.2: msg_type, length(3), message_seq(2), fragment_offset(3), fragment_length(3).
  const h = Buffer.alloc(12);
  h[0] = type;
  h.writeUIntBE(body.length, 1, 3);
  h.writeUInt16BE(seq, 4);
  h.writeUIntBE(0, 6, 3);
  h.writeUIntBE(body.length, 9, 3);
  return Buffer.concat([h, body]);
}

export function record(type: number, epoch: number, seq: number, fragment: Buffer): Buffer {
  // RFC 6347 §4.1: type, version, epoch, sequence_number(6), length.
  const h = Buffer.alloc(13);
  h[0] = type;
  h.writeUInt16BE(DTLS12, 1);
  h.writeUInt16BE(epoch, 3);
  h.writeUIntBE(seq, 5, 6);
  h.writeUInt16BE(fragment.length, 11);
  return Buffer.concat([h, fragment]);
}

function useSrtpExt(profile: number): Buffer {
  // RFC 5764 §4.1.1: extension 14, profiles<2..2^16-1>, srtp_mki<0..255>.
  const v = Buffer.from([0, 2, profile >> 8, profile & 0xff, 0]);
  const e = Buffer.alloc(4);
  e.writeUInt16BE(14, 0);
  e.writeUInt16BE(v.length, 2);
  return Buffer.concat([e, v]);
}

function exts(list: Buffer[]): Buffer {
  const all = Buffer.concat(list);
  const l = Buffer.alloc(2);
  l.writeUInt16BE(all.length, 0);
  return Buffer.concat([l, all]);
}

export function clientHello(random: Buffer): Buffer {
  // RFC 6347 §4.2.1: version, random, session_id, cookie, cipher_suites, compression.
  const body = Buffer.concat([
    Buffer.from([0xfe, 0xfd]),
    random,
    Buffer.from([0]), // session_id
    Buffer.from([0]), // cookie
    Buffer.from([0, 2, SUITE >> 8, SUITE & 0xff]),
    Buffer.from([1, 0]),
    exts([useSrtpExt(1), Buffer.from([0, 23, 0, 0])]),
  ]);
  return record(22, 0, 0, handshake(1, 0, body));
}

export function serverHello(random: Buffer): Buffer {
  const body = Buffer.concat([
    Buffer.from([0xfe, 0xfd]),
    random,
    Buffer.from([0]),
    Buffer.from([SUITE >> 8, SUITE & 0xff]),
    Buffer.from([0]),
    exts([useSrtpExt(1), Buffer.from([0, 23, 0, 0])]),
  ]);
  return record(22, 0, 0, handshake(2, 0, body));
}

export interface SyntheticSession {
  keySet: KeySet;
  association: string;
  /** Datagrams: hellos (client first), then whatever the caller builds. */
  hello: { fromClient: boolean; data: Buffer }[];
  /** An application_data record (epoch 1) from the client or the server. */
  appData(fromClient: boolean, plaintext: Buffer): Buffer;
  /** An SRTP packet from the client or the server. */
  srtp(fromClient: boolean, seq: number, payload: Buffer, ssrc?: number): Buffer;
  /** Every secret byte string of the key set (for "never serialised" checks). */
  secrets(): string[];
}

export function syntheticSession(): SyntheticSession {
  const clientRandom = randomBytes(32);
  const serverRandom = randomBytes(32);
  const keySet: KeySet = {
    clientRandom,
    serverRandom,
    cipherSuite: SUITE,
    epoch: 1,
    clientWriteKey: randomBytes(16),
    serverWriteKey: randomBytes(16),
    clientWriteIv: randomBytes(4),
    serverWriteIv: randomBytes(4),
    srtpProfile: 1,
    srtpClientMasterKey: randomBytes(16),
    srtpServerMasterKey: randomBytes(16),
    srtpClientMasterSalt: randomBytes(14),
    srtpServerMasterSalt: randomBytes(14),
  };
  const enc = {
    c: new DtlsRecordEncryptor(SUITE, { key: keySet.clientWriteKey!, iv: keySet.clientWriteIv! }),
    s: new DtlsRecordEncryptor(SUITE, { key: keySet.serverWriteKey!, iv: keySet.serverWriteIv! }),
  };
  const srtpCtx = {
    c: new SrtpContext(1, keySet.srtpClientMasterKey!, keySet.srtpClientMasterSalt!),
    s: new SrtpContext(1, keySet.srtpServerMasterKey!, keySet.srtpServerMasterSalt!),
  };
  const seq = { c: 1, s: 1 };
  return {
    keySet,
    association: clientRandom.toString('hex'),
    hello: [
      { fromClient: true, data: clientHello(clientRandom) },
      { fromClient: false, data: serverHello(serverRandom) },
    ],
    appData(fromClient, plaintext) {
      const k = fromClient ? 'c' : 's';
      const n = seq[k]++;
      return record(23, 1, n, enc[k].encrypt(23, DTLS12, 1, n, plaintext));
    },
    srtp(fromClient, sq, payload, ssrc = fromClient ? 0x11111111 : 0x22222222) {
      const rtp = serializeRtp({ payloadType: 111, sequenceNumber: sq, timestamp: sq * 960, ssrc, payload });
      return srtpCtx[fromClient ? 'c' : 's'].protectRtp(rtp);
    },
    secrets() {
      return [
        keySet.clientWriteKey!,
        keySet.serverWriteKey!,
        keySet.srtpClientMasterKey!,
        keySet.srtpServerMasterKey!,
        keySet.srtpClientMasterSalt!,
        keySet.srtpServerMasterSalt!,
      ].map((b) => b.toString('hex'));
    },
  };
}

/** SCTP packets of a data channel: INIT, DCEP OPEN on `stream`, then messages (PPID 51/53). */
export class SctpBuilder {
  private tsn: number;
  constructor(
    private readonly vtag = 0x01020304,
    tsn = 1000,
  ) {
    this.tsn = tsn;
  }
  init(): Buffer {
    return encodeSctpPacket(5000, 5000, 0, [encodeInitChunk(false, { initiateTag: this.vtag, initialTsn: this.tsn })]);
  }
  open(stream: number, label: string): Buffer {
    return encodeSctpPacket(5000, 5000, this.vtag, [
      encodeDataChunk({ tsn: this.tsn++, stream, ppid: 50, data: encodeDcepOpen({ label }) }),
    ]);
  }
  message(stream: number, data: Buffer, binary = false): Buffer {
    return encodeSctpPacket(5000, 5000, this.vtag, [encodeDataChunk({ tsn: this.tsn++, stream, ppid: binary ? 53 : 51, data })]);
  }
  /** A message split into fragments of `size` bytes (RFC 9260 §6.9: consecutive TSNs, B/E flags). */
  fragmented(stream: number, data: Buffer, size: number): Buffer[] {
    const out: Buffer[] = [];
    for (let o = 0; o < data.length; o += size) {
      out.push(
        encodeSctpPacket(5000, 5000, this.vtag, [
          encodeDataChunk({
            tsn: this.tsn++,
            stream,
            ppid: 53,
            begin: o === 0,
            end: o + size >= data.length,
            data: data.subarray(o, o + size),
          }),
        ]),
      );
    }
    return out;
  }
}
