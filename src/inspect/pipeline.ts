/**
 * Per-flow inspection pipeline (design.md "One packet's walk", step 3) and the flow
 * table that maps 5-tuples to pipelines.
 *
 *   payload ──RFC 7983 §7──► STUN: counted, passed
 *                         ├► DTLS: DtlsSession (records, handshake, decryption)
 *                         │     └► application data ─► SCTP (RFC 9260 §3.1 header +
 *                         │          CRC32c) ? DataChannelTracker : `appdata` event
 *                         ├► RTP/RTCP: MediaTracker with the association's SRTP keys
 *                         └► ZRTP, ChannelData (inside a flow), others: counted, dropped
 *
 * The pipeline knows no sockets and no clock: time comes with each packet.
 */
import { sha256Hex } from '../util/sha256.js';
import { demuxCode, PC_STUN, PC_ZRTP, PC_DTLS, PC_CHANNELDATA, PC_RTP, isRtcp } from '../wire/demux.js';
import type { Direction, EventListener, InspectEvent } from './events.js';
import type { FlowMeta } from './eve-format.js';
import type { Endpoint, TurnConnection } from './turn-unwrap.js';
import { DtlsSession, type KeyStatus } from './dtls-session.js';
import { DataChannelTracker } from './datachannel.js';
import type { TransferOptions } from './transfer.js';
import { MediaTracker } from './media.js';
import type { KeyLog } from './keylog.js';
import { associationId, type KeySet } from '../wire/keyset.js';
import { deriveSrtpTls13, type SrtpKeyMaterial } from '../wire/tls-prf.js';
import { SrtpContext } from '../wire/srtp.js';
import { cipherSuiteInfo } from '../wire/dtls-crypto.js';
import { verifySctpChecksum, SCTP_COMMON_HEADER_LEN } from '../wire/sctp.js';
import { CT_HANDSHAKE, HT_CLIENT_HELLO, RECORD_HEADER_LEN, newRecord, readRecord } from '../wire/dtls.js';

/**
 * Where a pipeline gets keys: an NSS key log (DtlsSession derives key sets from it once
 * a handshake's randoms are known) and/or key sets (key-escrow.md §3) by association.
 */
export interface KeyProvider {
  keyLog?: KeyLog;
  /** Key sets for an association (client_random hex); empty when none. */
  keySetsFor?(association: string): readonly KeySet[];
}

/** Key sets held in memory (e.g. from a JSON key-set file), plus an optional key log. */
export class StaticKeyProvider implements KeyProvider {
  private readonly byAssoc = new Map<string, KeySet[]>();
  constructor(
    keySets: readonly KeySet[] = [],
    readonly keyLog?: KeyLog,
  ) {
    for (const ks of keySets) {
      const id = associationId(ks.clientRandom);
      const l = this.byAssoc.get(id) ?? [];
      l.push(ks);
      this.byAssoc.set(id, l);
    }
  }
  get size(): number {
    return this.byAssoc.size;
  }
  keySetsFor(association: string): readonly KeySet[] {
    return this.byAssoc.get(association) ?? [];
  }
}

export interface PipelineCounters {
  packets: number;
  bytes: number;
  stun: number;
  zrtp: number;
  dtls: number;
  rtp: number;
  rtcp: number;
  /** ChannelData inside a flow (TURN framing that was not unwrapped). */
  channeldata: number;
  /** First byte outside every RFC 7983 range. */
  dropped: number;
  /** DTLS records that could not be decrypted (no keys, wrong keys, malformed). */
  undecryptableDtls: number;
  /** SRTP / SRTCP packets that could not be authenticated or decrypted. */
  undecryptableSrtp: number;
  /** Decrypted application data records that were not SCTP. */
  appdata: number;
  /** Decrypted application data records handed to the data channel tracker. */
  sctp: number;
  /** RTP-range packets on flows with no DTLS at all (not DTLS-SRTP as far as we can see). */
  mediaWithoutDtls: number;
  /** Exceptions caught inside a decoder (bugs, never expected; the packet is dropped). */
  internalErrors: number;
  events: number;
}

export interface PipelineOptions {
  keys: KeyProvider;
  /** Emit one `rtp.packet` per decrypted RTP/RTCP packet (default true). */
  rtpPackets?: boolean;
  /** Cap on data channel trackers (associations) per flow (default 8). */
  maxAssociations?: number;
  /**
   * DTLS datagrams reach the session through feedDtls() (the gateway's guard feeds them on
   * arrival, one parse per flow); feed() then only counts them.
   */
  dtlsExternal?: boolean;
  /** Data-channel file transfers (issue 9): max_file_bytes, pause, spooling. */
  transfers?: TransferOptions;
  /**
   * SHA-256 of every `appdata` record (default true). `gatehouse inspect` turns it off
   * unless `--hash records` or `--rules` asks for it: on a capture of many small records
   * the hash is most of the work, and nothing reads it otherwise.
   */
  hashAppData?: boolean;
  /**
   * DtlsSessionOptions.plaintextInto: with it an `appdata` event's `data` is valid only
   * during the listener's call (offline inspection, whose listeners keep nothing of it; the
   * data channel tracker copies what it keeps). One buffer for all of an inspector's flows.
   */
  plaintextInto?: Buffer;
}

export function newCounters(): PipelineCounters {
  return {
    packets: 0,
    bytes: 0,
    stun: 0,
    zrtp: 0,
    dtls: 0,
    rtp: 0,
    rtcp: 0,
    channeldata: 0,
    dropped: 0,
    undecryptableDtls: 0,
    undecryptableSrtp: 0,
    appdata: 0,
    sctp: 0,
    mediaWithoutDtls: 0,
    internalErrors: 0,
    events: 0,
  };
}

/** RFC 9147 §4.2.3: the record-number mask is computed over the first 16 ciphertext bytes. */
const SN_SAMPLE_LEN = 16;
const probeRecord = newRecord();

/**
 * Whether the whole datagram walks as DTLS records (RFC 6347 §4.1 DTLSPlaintext, RFC 9147 §4
 * unified headers without CID): every record delimited, each unified one with at least the
 * 16-byte sample its record-number encryption needs (RFC 9147 §4.2.3: shorter records are
 * rejected as if they failed deprotection).
 */
function delimitsAsDtls(payload: Buffer): boolean {
  let off = 0;
  while (off < payload.length) {
    const next = readRecord(payload, off, probeRecord);
    if (next < 0) return false;
    if (probeRecord.unified && probeRecord.fragment.length < SN_SAMPLE_LEN) return false;
    off = next;
  }
  return true;
}

export { sha256Hex };

/**
 * One flow's pipeline. `dir` given to feed() is relative to the flow's side A ('c2s' =
 * from A); events carry directions relative to the DTLS client (events.ts), and
 * dtlsClientIsA tells which side that is once a ClientHello was seen.
 */
export class FlowPipeline {
  readonly counters: PipelineCounters = newCounters();
  private readonly listeners: EventListener[] = [];
  private readonly keys: KeyProvider;
  private readonly session: DtlsSession;
  private readonly trackers = new Map<string, DataChannelTracker>();
  /** The trackers' values, for allocation-free accounting (bufferedBytes). */
  private trackerList: DataChannelTracker[] = [];
  private readonly dtlsExternal: boolean;
  /** Associations whose application data is SCTP (sticky, RFC 8261 §4). */
  private readonly sctpAssoc = new Set<string>();
  private readonly provisioned = new Set<string>();
  private readonly maxAssoc: number;
  private readonly rtpPackets: boolean;
  private readonly transfers: TransferOptions | undefined;
  private readonly hashAppData: boolean;
  private clientIsA: boolean | undefined;
  private assoc: string | undefined;
  private srtp: { association: string; keys: SrtpKeyMaterial } | undefined;
  private mediaTracker: MediaTracker | undefined;
  /**
   * Whether the last SRTP/SRTCP packet fed authenticated under the flow's keys (RFC 3711
   * §3.4, RFC 7714 §9.3); null when the last feed() carried no media. The gateway forwards
   * media of a covered flow only when it did.
   */
  lastMediaAuthenticated: boolean | null = null;
  /** SRTP/SRTCP packets seen before any keys: reported as `undecryptable` (no_keys). */
  private noKeys = { pending: 0, last: 0, emitted: false };
  /** DTLS 1.3 SRTP profile discovery (see trySrtp13): candidates and packets left to try. */
  private srtp13: { association: string; cands: { m: SrtpKeyMaterial; c2s: SrtpContext; s2c: SrtpContext }[]; tries: number } | undefined;
  private lastTime = 0;
  private closed = false;
  private readonly emitBound = (e: InspectEvent): void => this.emit(e);

  constructor(opts: PipelineOptions) {
    this.keys = opts.keys;
    this.maxAssoc = Math.max(1, opts.maxAssociations ?? 8);
    this.rtpPackets = opts.rtpPackets ?? true;
    this.dtlsExternal = opts.dtlsExternal ?? false;
    this.transfers = opts.transfers;
    this.hashAppData = opts.hashAppData ?? true;
    this.session = new DtlsSession({
      listener: this.emitBound,
      onAppData: (pt, dir, association, time) => this.onAppData(pt, dir, association, time),
      onSrtpKeys: (association, keys, time) => this.onSrtpKeys(association, keys, time),
      keyLog: opts.keys.keyLog,
      // Live (the guard feeds the session on arrival): held records wait for escrowed keys quietly.
      reportHeld: !this.dtlsExternal,
      ...(opts.plaintextInto ? { plaintextInto: opts.plaintextInto } : {}),
      // DTLS 1.3 records: the session's default opener over src/wire/dtls13.ts.
    });
  }

  on(listener: EventListener): this {
    this.listeners.push(listener);
    return this;
  }

  off(listener: EventListener): this {
    const i = this.listeners.indexOf(listener);
    if (i >= 0) this.listeners.splice(i, 1);
    return this;
  }

  /**
   * Adds a key set that arrived after the flow started (e.g. escrowed over TURN,
   * key-escrow.md §2.2). Returns the DtlsSession's verdict: 'verified' / 'invalid' when
   * records already seen decide it, else 'pending'. Throws KeySetError on an invalid set.
   */
  addKeySet(ks: KeySet, time: number): KeyStatus {
    return this.session.addKeySet(ks, time);
  }

  /** The flow's DTLS session (one per flow: the gateway's guard shares it). */
  get dtlsSession(): DtlsSession {
    return this.session;
  }

  /** Bytes buffered for this flow: DTLS backlog copies and SCTP reassembly. No allocation. */
  get bufferedBytes(): number {
    let n = this.session.bufferedBytes;
    for (let i = 0; i < this.trackerList.length; i++) n += this.trackerList[i]!.bufferedBytes + this.trackerList[i]!.spooledBytes;
    return n;
  }

  /** Data-channel file transfers in flight (a pause may still end them, expireTransfers). */
  get transfersInFlight(): number {
    let n = 0;
    for (let i = 0; i < this.trackerList.length; i++) n += this.trackerList[i]!.transfersInFlight;
    return n;
  }

  /**
   * Whether the DTLS datagram last given to feedDtls carries a DATA chunk (a retransmission)
   * of one the gateway withheld (DataChannelTracker.markWithheld).
   */
  get carriesWithheld(): boolean {
    for (let i = 0; i < this.trackerList.length; i++) if (this.trackerList[i]!.carriesWithheld) return true;
    return false;
  }

  /** The DTLS datagram last given to feedDtls is withheld: its SCTP DATA chunks' TSNs are remembered. */
  markWithheld(): void {
    for (let i = 0; i < this.trackerList.length; i++) this.trackerList[i]!.markWithheld();
  }

  /** Ends transfers idle for the pause (policy.transfer_pause_ms): their `file` events are emitted now. */
  expireTransfers(time: number): void {
    if (this.closed) return;
    for (const tr of this.trackerList) tr.expireTransfers(time);
  }

  /**
   * Memory pressure (the gateway's allocation budget): drops the DTLS backlog and every
   * partial SCTP message, reported as `cap.hit` (what, limit). Returns the bytes freed.
   */
  shedBuffers(time: number, what: string, limit: number, report = true): number {
    const n = this.bufferedBytes;
    this.session.dropBacklog();
    for (const tr of this.trackerList) tr.dropReassembly();
    if (report) this.emit({ type: 'cap.hit', what, limit, time });
    return n;
  }

  /**
   * Feeds one DTLS datagram (RFC 7983 §7 [20..63]) when DTLS is fed separately
   * (opts.dtlsExternal). `tag` and `owned`: see DtlsSession.feed.
   */
  feedDtls(payload: Buffer, dir: Direction, time: number, tag = -1, owned = false): void {
    if (this.closed) return;
    this.lastTime = time;
    for (let i = 0; i < this.trackerList.length; i++) this.trackerList[i]!.beginDatagram();
    try {
      // RFC 6347 §4.1: a DTLSPlaintext header has version major 254 (0xfe).
      if (payload.length === 0 || (payload[0]! < 0x20 && payload[1] !== 0xfe)) return;
      this.dtls(payload, dir, time, tag, owned);
    } catch {
      this.counters.internalErrors++;
    }
  }

  /** Whether side A is the DTLS client; undefined until a ClientHello was seen. */
  get dtlsClientIsA(): boolean | undefined {
    return this.clientIsA;
  }

  /** The newest association (client_random hex) seen on the flow. */
  get association(): string | undefined {
    return this.assoc;
  }

  /** SRTP keys of the newest association that has them (never log them). */
  get srtpKeys(): { association: string; keys: SrtpKeyMaterial } | undefined {
    return this.srtp;
  }

  /**
   * Feeds one datagram of the flow. Never throws on malformed input: an exception inside
   * a decoder is counted (internalErrors) and the packet dropped.
   */
  feed(payload: Buffer, dir: Direction, time: number): void {
    if (this.closed) return;
    const c = this.counters;
    c.packets++;
    c.bytes += payload.length;
    this.lastTime = time;
    this.lastMediaAuthenticated = null;
    try {
      switch (demuxCode(payload, 0)) {
        case PC_STUN:
          // RFC 7983 §7 [0..3]: STUN (ICE connectivity checks, consent freshness); passed.
          c.stun++;
          return;
        case PC_DTLS:
          // RFC 7983 §7 [20..63]: DTLS 1.2 content types and DTLS 1.3 unified headers.
          // RFC 6347 §4.1: a DTLSPlaintext header has version major 254 (0xfe); anything
          // else in 20..31 is not DTLS (e.g. a DNS query id), dropped without a report.
          if (payload[0]! < 0x20 && payload[1] !== 0xfe) {
            c.dropped++;
            return;
          }
          // RFC 9147 §4: 32..63 are DTLS 1.3 unified headers, which carry no version to check.
          // On a flow that has shown no DTLS yet, a datagram whose records cannot be delimited
          // as unified-header records (C bit of a CID we cannot know, a length past the
          // datagram, less ciphertext than the §4.2.3 record-number sample) is not DTLS
          // either (e.g. a DNS query id 0x37xx), dropped without a report. Once a flow has
          // shown DTLS, such a datagram goes to the session, which reports it.
          if (c.dtls === 0 && payload[0]! >= 0x20 && !delimitsAsDtls(payload)) {
            c.dropped++;
            return;
          }
          c.dtls++;
          if (!this.dtlsExternal) this.dtls(payload, dir, time);
          return;
        case PC_RTP:
          // RFC 7983 §7 [128..191]; RFC 5761 §4 tells RTCP from RTP.
          if (isRtcp(payload, 0)) {
            c.rtcp++;
            this.media(payload, dir, time, true);
          } else {
            c.rtp++;
            this.media(payload, dir, time, false);
          }
          return;
        case PC_ZRTP:
          c.zrtp++; // RFC 7983 §7 [16..19]: ZRTP is not used by WebRTC; counted only
          return;
        case PC_CHANNELDATA:
          c.channeldata++; // RFC 7983 §7 [64..79]: TURN framing reaching a flow; counted only
          return;
        default:
          c.dropped++; // RFC 7983 §7: other first bytes MUST be dropped
          return;
      }
    } catch {
      c.internalErrors++;
    }
  }

  private dtls(payload: Buffer, dir: Direction, time: number, tag = -1, owned = false): void {
    // RFC 6347 §4.1 / RFC 9147 §5.1: a ClientHello travels in a plaintext handshake
    // record at epoch 0 (bytes 3-4) with handshake type 1 right after the 13-byte header.
    // Its sender is the DTLS client.
    const hello =
      payload.length > RECORD_HEADER_LEN &&
      payload[0] === CT_HANDSHAKE &&
      payload[3] === 0 &&
      payload[4] === 0 &&
      payload[RECORD_HEADER_LEN] === HT_CLIENT_HELLO;
    if (hello) this.clientIsA = dir === 'c2s';
    this.session.feed(payload, dir, time, tag, owned);
    if (payload[0] === CT_HANDSHAKE && payload.length > 4 && payload[3] === 0 && payload[4] === 0) this.provision(time);
  }

  /** Hands the key sets of newly seen associations to the DTLS session. */
  private provision(time: number): void {
    const assocs = this.session.associations();
    if (assocs.length > 0) this.assoc = assocs[assocs.length - 1]!.id;
    if (!this.keys.keySetsFor) return;
    for (const a of assocs) {
      if (this.provisioned.has(a.id)) continue;
      this.provisioned.add(a.id);
      for (const ks of this.keys.keySetsFor(a.id)) {
        try {
          this.session.addKeySet(ks, time);
        } catch {
          // An invalid key set is reported by whoever loaded it; here it is skipped.
        }
      }
    }
  }

  private onAppData(pt: Buffer, dir: Direction, association: string, time: number): void {
    if (this.closed) return;
    // RFC 8261 §4: SCTP over DTLS, one SCTP packet per record. Recognised by the common
    // header's CRC32c (RFC 9260 §6.8); on an association already carrying SCTP a zero
    // checksum is accepted too (RFC 9653 §5: after INIT/INIT ACK, which always carry it).
    const known = this.sctpAssoc.has(association);
    // RFC 9260 §3.2: the first chunk's Length (octets 14-15) is at least 4 and within the
    // packet; a record where it is not cannot be an SCTP packet, so the CRC32c over the
    // whole record (most of the cost of telling SCTP from other application data) is skipped.
    const chunkLen = pt.length >= SCTP_COMMON_HEADER_LEN + 4 ? (pt[14]! << 8) | pt[15]! : 0;
    const zeroChecksum = known && pt.length >= SCTP_COMMON_HEADER_LEN && pt.readUInt32LE(8) === 0;
    if (chunkLen >= 4 && chunkLen <= pt.length - SCTP_COMMON_HEADER_LEN && (zeroChecksum || verifySctpChecksum(pt))) {
      if (!known) this.sctpAssoc.add(association);
      this.counters.sctp++;
      let tr = this.trackers.get(association);
      if (!tr) {
        if (this.trackers.size >= this.maxAssoc) {
          const oldest = this.trackers.keys().next().value as string;
          this.trackers.get(oldest)?.close(); // frees its reassembly buffers at once
          this.trackers.delete(oldest);
          this.trackerList = [...this.trackers.values()];
          this.sctpAssoc.delete(oldest);
        }
        tr = new DataChannelTracker(this.emitBound, { association, ...(this.transfers ? { transfers: this.transfers } : {}) });
        this.trackers.set(association, tr);
        this.trackerList.push(tr);
      }
      // A CRC32c verified here is not computed again by the tracker; a zero one is its to judge.
      tr.push(pt, dir, time, association, !zeroChecksum);
      return;
    }
    this.counters.appdata++;
    if (this.hashAppData) this.emit({ type: 'appdata', time, dir, association, size: pt.length, sha256: sha256Hex(pt), data: pt });
    else this.emit({ type: 'appdata', time, dir, association, size: pt.length, data: pt });
  }

  private onSrtpKeys(association: string, keys: SrtpKeyMaterial, time: number): void {
    // RFC 5764 §4.2: the association's DTLS-SRTP keys; a newer association replaces
    // the older one's keys (key-escrow.md §5.3: a new handshake is a new association).
    this.srtp = { association, keys };
    this.mediaTracker ??= new MediaTracker({ emit: this.emitBound, association });
    this.mediaTracker.setKeys(keys, time);
  }

  private media(payload: Buffer, dir: Direction, time: number, rtcp: boolean): void {
    // SRTP keys are per DTLS role (RFC 5764 §4.2: client write keys protect what the
    // DTLS client sends); until a ClientHello shows the roles, side A is taken as client.
    const role: Direction = this.clientIsA === false ? (dir === 'c2s' ? 's2c' : 'c2s') : dir;
    let mt = this.mediaTracker;
    if ((!mt || !mt.hasKeys || !this.srtp) && this.trySrtp13(payload, role, time, rtcp)) mt = this.mediaTracker;
    if (!mt || !mt.hasKeys || !this.srtp) {
      this.lastMediaAuthenticated = false;
      this.noKeysSeen(role, time, rtcp);
      return;
    }
    const v = mt.handle(payload, role, time, this.srtp.association);
    if (v === 'undecryptable') this.counters.undecryptableSrtp++;
    this.lastMediaAuthenticated = v === 'rtp' || v === 'rtcp';
  }

  /**
   * DTLS 1.3 carries use_srtp in the encrypted EncryptedExtensions (RFC 8446 §4.3.1,
   * RFC 9147 §5), so the profile is not visible in the ServerHello and the DTLS session
   * cannot derive the SRTP keys from a key log by itself. Workaround: with the key log's
   * EXPORTER_SECRET, derive the RFC 5764 §4.2 material for each known profile (and both
   * HKDF label prefixes, "dtls13" per RFC 9147 §5.9 and "tls13 ") and keep the one that
   * authenticates a packet (RFC 3711 §3.3 / RFC 7714 §9.3: authentication proves the
   * keys). Bounded: the first 32 packets of an association are tried, then it gives up.
   */
  private trySrtp13(payload: Buffer, dir: Direction, time: number, rtcp: boolean): boolean {
    const kl = this.keys.keyLog;
    const id = this.assoc;
    if (!kl || !id) return false;
    let st = this.srtp13;
    if (!st || st.association !== id) {
      st = { association: id, cands: [], tries: 32 };
      this.srtp13 = st;
      const a = this.session.associations().find((x) => x.id === id);
      const entry = kl.get(id);
      const hash = a?.cipherSuite !== undefined ? cipherSuiteInfo(a.cipherSuite)?.prfHash : undefined;
      if (a?.version === 'DTLS1.3' && entry?.exporterSecret && hash) {
        for (const prefix of ['dtls13', 'tls13 ']) {
          for (const profile of [0x0007, 0x0001, 0x0008, 0x0002]) {
            const m = deriveSrtpTls13(hash, entry.exporterSecret, profile, prefix);
            if (!m) continue;
            try {
              st.cands.push({
                m,
                c2s: new SrtpContext(profile, m.clientMasterKey, m.clientMasterSalt),
                s2c: new SrtpContext(profile, m.serverMasterKey, m.serverMasterSalt),
              });
            } catch {
              // unsupported profile in this build: skip
            }
          }
        }
      }
    }
    if (st.cands.length === 0 || st.tries <= 0) return false;
    st.tries--;
    for (const c of st.cands) {
      const ctx = c[dir];
      const ok = rtcp ? ctx.unprotectRtcp(payload) : ctx.unprotectRtp(payload);
      if (!ok) continue;
      this.srtp13 = undefined;
      this.onSrtpKeys(id, c.m, time);
      return true;
    }
    if (st.tries <= 0) st.cands = [];
    return false;
  }

  private noKeysSeen(dir: Direction, time: number, rtcp: boolean): void {
    // Without any DTLS on the flow this is not (visibly) DTLS-SRTP: e.g. a DNS query whose
    // first byte falls in 128..191. Counted, not reported.
    if (this.counters.dtls === 0) {
      this.counters.mediaWithoutDtls++;
      return;
    }
    const n = this.noKeys;
    n.pending++;
    this.counters.undecryptableSrtp++;
    // Rate-limited like the DTLS session's: the first at once, then one per second of
    // packet time with the count since the previous one.
    if (!n.emitted || time - n.last >= 1000) {
      this.emit({
        type: 'undecryptable',
        what: rtcp ? 'srtcp' : 'srtp',
        reason: 'no_keys',
        count: n.pending,
        time,
        dir,
        association: this.assoc,
      });
      n.pending = 0;
      n.last = time;
      n.emitted = true;
    }
  }

  private emit(e: InspectEvent): void {
    if (e.type === 'rtp.packet' && !this.rtpPackets) return;
    this.counters.events++;
    if (e.type === 'undecryptable') {
      // SRTP failures are counted per packet in media(); DTLS ones arrive as counts.
      if (e.what === 'dtls') this.counters.undecryptableDtls += e.count;
    }
    for (let i = 0; i < this.listeners.length; i++) this.listeners[i]!(e);
  }

  /** Emits pending counts (rate-limited `undecryptable`), wipes keys and stops. */
  close(): void {
    if (this.closed) return;
    try {
      this.session.flush(this.lastTime);
      const n = this.noKeys;
      if (n.pending > 0) {
        this.emit({
          type: 'undecryptable',
          what: 'srtp',
          reason: 'no_keys',
          count: n.pending,
          time: this.lastTime,
          association: this.assoc,
        });
        n.pending = 0;
      }
    } catch {
      this.counters.internalErrors++;
    }
    this.closed = true;
    this.session.close();
    for (const tr of this.trackers.values()) tr.close();
    this.trackers.clear();
    this.trackerList = [];
    this.mediaTracker = undefined;
    this.srtp = undefined;
  }
}

// ---------------------------------------------------------------------------------
// Flow table

export interface FlowRecord {
  key: string;
  meta: FlowMeta;
  pipeline: FlowPipeline;
  firstSeen: number;
  lastSeen: number;
}

export interface FlowTableOptions {
  /** Builds the pipeline of a new flow. */
  makePipeline: (meta: FlowMeta) => FlowPipeline;
  /** Receives every event with its flow. */
  onEvent: (e: InspectEvent, flow: FlowRecord) => void;
  /** Called when a flow leaves the table (expiry, eviction, close). */
  onFlowEnd?: (flow: FlowRecord, why: 'idle' | 'evicted' | 'closed') => void;
  /** Cap on live flows (default 10000); the least recently seen one is evicted. */
  maxFlows?: number;
  /** Idle expiry in packet time (default 10 minutes). */
  idleMs?: number;
  /** Multi-threaded offline inspection: see FlowShard. */
  shard?: FlowShard;
}

/**
 * One worker's share of the flows (`gatehouse inspect --threads`): every worker keeps the
 * whole flow table (ids, LRU order, expiry are the same in all of them) but feeds only
 * the pipelines of the flows it owns. Each feed or end of a flow is a numbered slot; a
 * flow's events are emitted inside its slot, so merging the workers' output by slot gives
 * the single-threaded order.
 */
export interface FlowShard {
  owns(flowId: number): boolean;
  /** Called before slot `slot` (numbered from 1) of flow `flowId` runs. */
  onSlot(slot: number, flowId: number, owned: boolean): void;
}

export interface FlowTableStats {
  created: number;
  expired: number;
  evicted: number;
}

function epKey(ip: string, port: number): string {
  return ip.includes(':') ? `[${ip}]:${port}` : `${ip}:${port}`;
}

/**
 * Maps a flow's two directions to one pipeline. A flow is a UDP 5-tuple pair (or, for
 * traffic unwrapped from a TURN client leg, the client transport × peer address).
 * Bounded: at most maxFlows live flows, idle ones expire as packet time advances.
 */
export class FlowTable {
  private readonly flows = new Map<string, FlowRecord>();
  private nextId = 1;
  private slot = 0;
  private nextSweep = -Infinity;
  private readonly maxFlows: number;
  private readonly idleMs: number;
  readonly stats: FlowTableStats = { created: 0, expired: 0, evicted: 0 };
  /**
   * The flow of the last datagram and its addresses: a capture's datagrams come in runs of
   * one flow, and the run's next datagram then needs no key built. The flow is already
   * last in LRU order (it was fed last). Cleared when that flow ends.
   */
  private last: {
    rec: FlowRecord;
    proto: 'UDP' | 'TCP';
    srcIp: string;
    srcPort: number;
    dstIp: string;
    dstPort: number;
    turn: TurnConnection | undefined;
  } | null = null;

  constructor(private readonly o: FlowTableOptions) {
    this.maxFlows = Math.max(1, o.maxFlows ?? 10_000);
    this.idleMs = o.idleMs ?? 10 * 60_000;
  }

  get size(): number {
    return this.flows.size;
  }

  values(): IterableIterator<FlowRecord> {
    return this.flows.values();
  }

  /**
   * Feeds a datagram from src to dst. `turn`: the TURN client transport it was unwrapped
   * from (then src/dst are the client and the peer).
   */
  feed(
    proto: 'UDP' | 'TCP',
    srcIp: string,
    srcPort: number,
    dstIp: string,
    dstPort: number,
    payload: Buffer,
    time: number,
    turn?: TurnConnection,
  ): FlowRecord {
    const l = this.last;
    if (l !== null && l.proto === proto && l.turn === turn && time < this.nextSweep) {
      const same = l.srcPort === srcPort && l.dstPort === dstPort && l.srcIp === srcIp && l.dstIp === dstIp;
      if (same || (l.srcPort === dstPort && l.dstPort === srcPort && l.srcIp === dstIp && l.dstIp === srcIp)) {
        return this.feedFlow(l.rec, srcIp, srcPort, payload, time, turn);
      }
    }
    const s = epKey(srcIp, srcPort);
    const d = epKey(dstIp, dstPort);
    const via = turn ? `turn|${turn.key}|` : '';
    const lo = s < d;
    const key = `${via}${proto}|${lo ? s : d}|${lo ? d : s}`;
    if (time >= this.nextSweep) this.sweep(time);
    let f = this.flows.get(key);
    if (!f) {
      if (this.flows.size >= this.maxFlows) this.evictOldest();
      const meta: FlowMeta = {
        flowId: this.nextId++,
        proto,
        a: { ip: srcIp, port: srcPort },
        b: { ip: dstIp, port: dstPort },
      };
      if (turn) meta.turn = { transport: turn.transport, client: turn.client, server: turn.server, relayed: turn.relayed };
      const pipeline = this.o.makePipeline(meta);
      const rec: FlowRecord = { key, meta, pipeline, firstSeen: time, lastSeen: time };
      pipeline.on((e) => {
        rec.meta.dtlsClientIsA = pipeline.dtlsClientIsA;
        this.o.onEvent(e, rec);
      });
      this.flows.set(key, rec);
      this.stats.created++;
      f = rec;
    } else {
      // LRU order: move to the end.
      this.flows.delete(key);
      this.flows.set(key, f);
    }
    this.last = { rec: f, proto, srcIp, srcPort, dstIp, dstPort, turn };
    return this.feedFlow(f, srcIp, srcPort, payload, time, turn);
  }

  private feedFlow(
    f: FlowRecord,
    srcIp: string,
    srcPort: number,
    payload: Buffer,
    time: number,
    turn: TurnConnection | undefined,
  ): FlowRecord {
    f.lastSeen = time;
    if (turn?.relayed && f.meta.turn && !f.meta.turn.relayed) f.meta.turn.relayed = turn.relayed;
    const sh = this.o.shard;
    if (sh) {
      const own = sh.owns(f.meta.flowId);
      sh.onSlot(++this.slot, f.meta.flowId, own);
      if (!own) return f;
    }
    const fromA = f.meta.a.ip === srcIp && f.meta.a.port === srcPort;
    f.pipeline.feed(payload, fromA ? 'c2s' : 's2c', time);
    return f;
  }

  private end(k: string, f: FlowRecord, why: 'idle' | 'evicted' | 'closed'): void {
    if (this.last?.rec === f) this.last = null;
    this.flows.delete(k);
    const sh = this.o.shard;
    const own = sh ? sh.owns(f.meta.flowId) : true;
    sh?.onSlot(++this.slot, f.meta.flowId, own);
    if (own) f.pipeline.close(); // another worker's flow: never fed here, so nothing to close
    this.o.onFlowEnd?.(f, why);
  }

  private evictOldest(): void {
    const first = this.flows.entries().next().value as [string, FlowRecord] | undefined;
    if (!first) return;
    this.stats.evicted++;
    this.end(first[0], first[1], 'evicted');
  }

  /** Expires flows idle longer than idleMs (in packet time). */
  sweep(time: number): void {
    this.nextSweep = time + Math.max(1000, this.idleMs / 10);
    for (const [k, f] of this.flows) {
      if (time - f.lastSeen <= this.idleMs) break; // LRU order: the rest are fresher
      this.stats.expired++;
      this.end(k, f, 'idle');
    }
  }

  /** Ends every flow (end of capture). */
  closeAll(): void {
    for (const [k, f] of this.flows) this.end(k, f, 'closed');
  }
}

export type { Endpoint };
