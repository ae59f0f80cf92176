/**
 * Per-flow DTLS tracker: follows handshakes (associations), decrypts records with escrowed
 * or key-logged keys, verifies key sets against traffic, watches for re-negotiation.
 *
 * Public API:
 *   new DtlsSession(opts: DtlsSessionOptions)
 *   .feed(datagram, dir, time): void       — one UDP payload that demux classified as DTLS.
 *       `dir` is relative to the first sender of the flow; roles (client/server) are taken
 *       from the ClientHello, and every event / callback uses DTLS roles ('c2s' = from the
 *       DTLS client), as src/inspect/events.ts defines.
 *   .addKeySet(ks, time?): KeyStatus       — a validated KeySet (src/wire/keyset.ts); the
 *       session keeps its own copy. Returns 'verified' / 'invalid' when records already seen
 *       decide it (key-escrow.md §2.4 KEY-STATUS 1 / 2), else 'pending' (0). Buffered records
 *       of that epoch are decrypted on verification and delivered in order.
 *   .keyStatus(association): KeyStatus | undefined
 *   .srtpKeys(association): SrtpKeyMaterial | undefined  — for the SRTP pipeline (never log it)
 *   .associations(): AssociationInfo[]     — no secrets
 *   .stats                                  — counters, and firstProtectedAt (packet time of the
 *       first record at epoch >= 1: the key deadline starts there, key-escrow.md §5.1)
 *   .flush(time): void                      — emits pending rate-limited `undecryptable` counts
 *   .close(): void                          — wipes every key
 *
 * Callbacks (DtlsSessionOptions): listener(InspectEvent) for dtls.handshake,
 * dtls.renegotiation, keys.verified, keys.invalid, undecryptable, cap.hit;
 * onAppData(plaintext, dir, association, time) for decrypted application_data;
 * onSrtpKeys(association, material, time) when an association's SRTP keys become known.
 *
 * Policy: records are only ever decrypted with keys of their epoch; epochs without keys are
 * counted ('no_keys') and kept (capped) until keys arrive, never guessed. Plaintext is
 * delivered only after authentication (src/wire/dtls-crypto.ts).
 *
 * DTLS 1.3: detected from ServerHello.supported_versions (RFC 8446 §4.2.1, 0xfefc). Unified
 * header records (RFC 9147 §4) are opened by `opts.dtls13` (default: defaultDtls13Opener,
 * Dtls13Stream of src/wire/dtls13.ts per direction) with key sets carrying the application
 * (and optionally handshake) traffic secrets; decrypted EncryptedExtensions give the
 * use_srtp profile (RFC 8446 §4.3.1). `dtls13: null` counts them as 'dtls13_unsupported'.
 */
import {
  CT_APPLICATION_DATA,
  CT_CHANGE_CIPHER_SPEC,
  CT_HANDSHAKE,
  DTLS_1_3,
  HT_CLIENT_HELLO,
  HT_ENCRYPTED_EXTENSIONS,
  HT_FINISHED,
  HT_HELLO_REQUEST,
  HT_SERVER_HELLO,
  HandshakeReassembler,
  newRecord,
  parseClientHello,
  parseEncryptedExtensions,
  parseServerHello,
  readHandshakeHeader,
  readRecord,
  MAX_FRAGMENT_LEN,
  RECORD_HEADER_LEN,
  type ClientHello,
  type DtlsRecord,
  type HandshakeHeader,
  type HandshakeMessage,
} from '../wire/dtls.js';
import { DtlsRecordDecryptor, cipherSuiteInfo } from '../wire/dtls-crypto.js';
import { Dtls13Stream } from '../wire/dtls13.js';
import type { SrtpKeyMaterial } from '../wire/tls-prf.js';
import type { Direction, EventListener, InspectEvent } from './events.js';
import { keySetFromKeyLog, type KeyLog } from './keylog.js';
import { associationId, validateKeySet, wipeKeySet, type KeySet } from '../wire/keyset.js';

export type KeyStatus = 'pending' | 'verified' | 'invalid';

export type UndecryptableReason = 'no_keys' | 'auth_failed' | 'malformed' | 'connection_id' | 'dtls13_unsupported' | 'backlog_full';

/** Decrypts DTLS 1.3 unified-header records of one association (adapter over src/wire/dtls13.ts). */
export interface Dtls13Opener {
  /**
   * Decrypts the unified-header record at `record.start` of `datagram`, sent in `dir` (DTLS
   * roles). Returns the inner content type and plaintext, or null when it does not
   * authenticate / has no keys. Must never throw.
   */
  open(datagram: Buffer, record: DtlsRecord, dir: Direction): { type: number; plaintext: Buffer } | null;
  wipe?(): void;
}
/** Builds an opener from a DTLS 1.3 key set (application traffic secrets at ks.epoch). */
export type Dtls13OpenerFactory = (ks: KeySet) => Dtls13Opener | null;

/**
 * The default opener: one src/wire/dtls13.ts Dtls13Stream per direction (application chain
 * from ks.epoch, KeyUpdate followed by the reader, RFC 9147 §8; handshake epoch 2 when the
 * key set carries the handshake secrets).
 */
export const defaultDtls13Opener: Dtls13OpenerFactory = (ks) => {
  if (!ks.clientAppTrafficSecret || !ks.serverAppTrafficSecret) return null;
  try {
    const c2s = new Dtls13Stream(ks.cipherSuite, ks.clientAppTrafficSecret, ks.epoch, ks.clientHsTrafficSecret);
    const s2c = new Dtls13Stream(ks.cipherSuite, ks.serverAppTrafficSecret, ks.epoch, ks.serverHsTrafficSecret);
    return {
      open(datagram, record, dir) {
        try {
          const r = (dir === 'c2s' ? c2s : s2c).open(datagram, record.start);
          return r ? { type: r.contentType, plaintext: r.plaintext } : null;
        } catch {
          return null;
        }
      },
      wipe() {
        c2s.wipe();
        s2c.wipe();
      },
    };
  } catch {
    return null;
  }
};

export interface DtlsSessionOptions {
  listener: EventListener;
  onAppData?: (plaintext: Buffer, dir: Direction, association: string, time: number) => void;
  onSrtpKeys?: (association: string, keys: SrtpKeyMaterial, time: number) => void;
  /** NSS key log consulted once an association's randoms are known. */
  keyLog?: KeyLog;
  /** DTLS 1.3 record opener (default: defaultDtls13Opener over src/wire/dtls13.ts; null disables). */
  dtls13?: Dtls13OpenerFactory | null;
  /** Minimum packet-time gap between two `undecryptable` events of one reason (default 1000 ms). */
  undecryptableIntervalMs?: number;
  /** Failed records before a pending key set is declared invalid (default 1: key-escrow.md §5.2). */
  invalidAfter?: number;
  maxAssociations?: number; // default 8
  maxBacklogRecords?: number; // default 256
  maxBacklogBytes?: number; // default 1 MiB
  /**
   * Whether a record kept for keys that may still come is reported as `undecryptable`
   * no_keys at once (default true: offline inspection). The live gateway sets false: keys
   * are expected after the handshake (key-escrow.md §5.1), and a flow whose keys never come
   * is reported by the guard (`flow_uninspected`, `flow_blocked`), not record by record.
   */
  reportHeld?: boolean;
  /**
   * DTLS 1.2 AES-GCM records (with the addon) are decrypted into this buffer (at least
   * MAX_FRAGMENT_LEN octets, shared by every session of an inspector): the application data
   * handed to onAppData is then valid only during the call, copied by whoever keeps it.
   * Absent (the default): every plaintext is a Buffer of its own. Offline inspection sets it
   * (CaptureInspectorOptions.borrowedPlaintext).
   */
  plaintextInto?: Buffer;
  /**
   * The steady-state shortcut for single application_data records (default true); false
   * sends every datagram through the general record loop (tests compare the two).
   */
  steady?: boolean;
}

export interface AssociationInfo {
  id: string;
  version: 'DTLS1.2' | 'DTLS1.3';
  cipherSuite?: number;
  epoch: number;
  srtpProfile?: number;
  encryptThenMac: boolean;
  extendedMasterSecret: boolean;
  completed: boolean;
  keyStatus?: KeyStatus;
  /** Hex of the ServerHello's random (undefined until the ServerHello was seen). */
  serverRandom?: string;
  /** The ClientHello offered use_srtp (RFC 5764 §4.1.1). */
  srtpOffered: boolean;
  /** A key set with SRTP keys (pending or verified) is there (RFC 5764 §4.2). */
  hasSrtpKeys: boolean;
}

interface KeyEntry {
  ks: KeySet;
  id: string;
  status: KeyStatus;
  failures: number;
  dec: { c2s: DtlsRecordDecryptor; s2c: DtlsRecordDecryptor } | null;
  dec13: Dtls13Opener | null;
}

interface Assoc {
  id: string;
  clientRandom: Buffer;
  /** Raw direction (relative to the first sender) the client sends in. */
  clientSide: Direction;
  clientHello: ClientHello;
  serverRandom?: Buffer;
  cipherSuite?: number;
  version: 'DTLS1.2' | 'DTLS1.3';
  /** Epoch of the records the handshake ran in; its keys protect `epoch`. */
  hsEpoch: number;
  epoch: number;
  encryptThenMac: boolean;
  extendedMasterSecret: boolean;
  srtpProfile?: number;
  /** Fragment length of the first protected handshake record per direction (the Finished). */
  finishedLen: { c2s: number; s2c: number };
  completed: boolean;
  renegotiationSeen: boolean;
  keylogVersion: number;
  srtpAnnounced: boolean;
}

interface Held {
  rec: DtlsRecord;
  raw: Direction;
  time: number;
  /** The caller's tag of the datagram the record came in (see feed()). */
  tag: number;
  /** Bytes this entry copied (0 when it refers into a datagram the caller keeps). */
  copied: number;
}

const flip = (d: Direction): Direction => (d === 'c2s' ? 's2c' : 'c2s');

/** Handshake types this tracker needs reassembled (hellos, Finished). */
const WANTED = (t: number): boolean =>
  t === HT_CLIENT_HELLO || t === HT_SERVER_HELLO || t === HT_FINISHED || t === HT_HELLO_REQUEST || t === HT_ENCRYPTED_EXTENSIONS;

export class DtlsSession {
  readonly stats = {
    datagrams: 0,
    records: 0,
    decrypted: 0,
    appDataBytes: 0,
    undecryptable: {} as Record<string, number>,
    /** Packet time of the first record at epoch >= 1 (key-escrow.md §5.1: the deadline clock starts here). */
    firstProtectedAt: undefined as number | undefined,
  };

  private readonly opts: DtlsSessionOptions;
  private readonly emit: EventListener;
  private readonly interval: number;
  private readonly invalidAfter: number;
  private readonly maxAssoc: number;
  private readonly maxBacklogRecords: number;
  private readonly maxBacklogBytes: number;
  /** DtlsSessionOptions.plaintextInto */
  private readonly plaintextInto: Buffer | undefined;
  /** DtlsSessionOptions.steady */
  private readonly steady: boolean;
  /** Datagrams the steady-state shortcut handled (not in stats: those are the same either way). */
  steadyDatagrams = 0;

  /** Newest last. */
  private assocs: Assoc[] = [];
  /** Key sets by association id (client_random hex), possibly before the handshake is seen. */
  private keys = new Map<string, KeyEntry[]>();
  private reassemblers = new Map<string, HandshakeReassembler>();
  private backlog: Held[] = [];
  private backlogBytes = 0;
  /** Of backlogBytes, the bytes the session copied (the rest refer into callers' owned datagrams). */
  private backlogCopied = 0;
  /** Tag of the datagram being processed (feed(), or a held record being re-processed). */
  private tagNow = -1;
  /**
   * Protected records of the last feed() that did not authenticate on arrival (no keys,
   * a tag or MAC that fails, a record that cannot be delimited): what the gateway cannot
   * vouch for. DTLS 1.3 epoch-2 records (the encrypted handshake, which application
   * secrets cannot open, RFC 9147 §4) are counted apart, in lastUnauthenticatedHandshake.
   */
  lastUnauthenticated = 0;
  lastUnauthenticatedHandshake = 0;
  /** Called with the datagram's tag for every protected record that authenticates (also from the backlog). */
  onAuthenticated: ((tag: number) => void) | null = null;
  /** Whether the datagram being fed is a stable copy the caller keeps (hold() need not copy it). */
  private ownedNow = false;
  private undec = new Map<string, { pending: number; last: number; dir?: Direction; association?: string }>();
  private readonly rec = newRecord();
  private readonly hh: HandshakeHeader = { msgType: 0, length: 0, messageSeq: 0, fragmentOffset: 0, fragmentLength: 0 };
  private closed = false;
  private fast: { epoch: number; entry: KeyEntry; clientSide: Direction } | null = null;

  constructor(opts: DtlsSessionOptions) {
    this.opts = opts;
    this.emit = opts.listener;
    this.interval = opts.undecryptableIntervalMs ?? 1000;
    this.invalidAfter = Math.max(1, opts.invalidAfter ?? 1);
    this.maxAssoc = opts.maxAssociations ?? 8;
    this.maxBacklogRecords = opts.maxBacklogRecords ?? 256;
    this.maxBacklogBytes = opts.maxBacklogBytes ?? 1 << 20;
    this.plaintextInto = opts.plaintextInto;
    this.steady = opts.steady !== false;
  }

  // ---------------------------------------------------------------- input

  /**
   * `tag`: the caller's number for this datagram, reported by currentTag while its records
   * (or, later, its held records) are processed, so their events can be matched to it.
   * `owned`: the buffer is a copy the caller keeps unchanged while the flow lives (a held
   * datagram): held records refer into it instead of being copied again.
   */
  feed(datagram: Buffer, dir: Direction, time: number, tag = -1, owned = false): void {
    if (this.closed) return;
    if (this.steady && this.steadyAppData(datagram, dir, time, tag, owned)) return;
    this.stats.datagrams++;
    this.tagNow = tag;
    this.ownedNow = owned;
    this.lastUnauthenticated = 0;
    this.lastUnauthenticatedHandshake = 0;
    const r = this.rec;
    let off = 0;
    while (off < datagram.length) {
      const next = readRecord(datagram, off, r);
      if (next < 0) {
        // RFC 9146 §4: a tls12_cid record (type 25) or CID-bearing unified header cannot be delimited.
        const b0 = datagram[off]!;
        this.lastUnauthenticated++;
        this.undecryptable(b0 === 25 || (b0 & 0xf0) === 0x30 ? 'connection_id' : 'malformed', dir, time, undefined);
        return;
      }
      off = next;
      this.stats.records++;
      if (this.stats.firstProtectedAt === undefined && (r.unified || r.epoch >= 1)) this.stats.firstProtectedAt = time;
      if (r.unified) this.onUnified(r, datagram, dir, time);
      else if (r.epoch === 0) this.onPlaintext(r, dir, time);
      else this.onProtected(r, dir, time, false);
    }
  }

  /**
   * The steady state of a session, most of its datagrams: one DTLS 1.2 application_data
   * record (RFC 6347 §4.1) of the epoch whose verified keys decrypted the last record.
   * Handled with the effects the loop below has for it (counts, the plaintext to
   * onAppData), without parsing it into a record or looking the keys up again. False, with
   * nothing changed, for anything else (including a record that does not authenticate:
   * the loop then decrypts it again and reports it).
   */
  private steadyAppData(datagram: Buffer, dir: Direction, time: number, tag: number, owned: boolean): boolean {
    const f = this.fast;
    if (f === null || f.entry.status !== 'verified' || !f.entry.dec) return false;
    const n = datagram.length;
    // RFC 6347 §4.1: type(1) version(2) epoch(2) sequence_number(6) length(2); DTLS versions are 254.x.
    if (n < RECORD_HEADER_LEN || datagram[0] !== CT_APPLICATION_DATA || datagram[1] !== 0xfe) return false;
    const len = (datagram[11]! << 8) | datagram[12]!;
    if (RECORD_HEADER_LEN + len !== n || len > MAX_FRAGMENT_LEN) return false;
    const epoch = (datagram[3]! << 8) | datagram[4]!;
    if (epoch !== f.epoch) return false;
    const version = (datagram[1]! << 8) | datagram[2]!;
    // 48-bit sequence_number (bytes 5..10), as readRecord reads it.
    const seq =
      (datagram[5]! * 0x10000 + ((datagram[6]! << 8) | datagram[7]!)) * 0x1000000 +
      ((datagram[8]! << 16) | (datagram[9]! << 8) | datagram[10]!);
    const d: Direction = dir === f.clientSide ? 'c2s' : 's2c';
    const pt = f.entry.dec[d].decryptAt(CT_APPLICATION_DATA, version, epoch, seq, datagram, RECORD_HEADER_LEN, len);
    if (!pt) return false;
    // What feed() and onProtected() do for this datagram.
    this.steadyDatagrams++;
    this.stats.datagrams++;
    this.tagNow = tag;
    this.ownedNow = owned;
    this.lastUnauthenticated = 0;
    this.lastUnauthenticatedHandshake = 0;
    this.stats.records++;
    this.stats.firstProtectedAt ??= time;
    this.stats.decrypted++;
    this.onAuthenticated?.(tag);
    const id = f.entry.id;
    const assocs = this.assocs;
    for (let i = 0; i < assocs.length; i++) if (assocs[i]!.id === id) assocs[i]!.completed = true; // ids are unique
    this.stats.appDataBytes += pt.length;
    this.opts.onAppData?.(pt, d, id, time);
    return true;
  }

  // ---------------------------------------------------------------- keys

  addKeySet(input: KeySet, time = 0): KeyStatus {
    validateKeySet(input);
    const ks = cloneKeySet(input);
    const id = associationId(ks.clientRandom);
    const list = this.keys.get(id) ?? [];
    // The same secrets twice (escrow and key log, or a resend) are one entry.
    const dup = list.find((e) => e.ks.epoch === ks.epoch && sameKeys(e.ks, ks));
    if (dup) {
      if (dup.ks.srtpProfile === undefined && ks.srtpProfile !== undefined && dup.status !== 'invalid') {
        // The same record keys, now with SRTP keys (DTLS 1.3: profile learnt from EncryptedExtensions).
        dup.ks.srtpProfile = ks.srtpProfile;
        dup.ks.srtpClientMasterKey = ks.srtpClientMasterKey;
        dup.ks.srtpServerMasterKey = ks.srtpServerMasterKey;
        dup.ks.srtpClientMasterSalt = ks.srtpClientMasterSalt;
        dup.ks.srtpServerMasterSalt = ks.srtpServerMasterSalt;
        // The rest of the clone is a second copy of secrets the entry has: wiped (§5.5).
        ks.srtpClientMasterKey = ks.srtpServerMasterKey = ks.srtpClientMasterSalt = ks.srtpServerMasterSalt = undefined;
        wipeKeySet(ks);
        this.announceSrtp(id, time);
        return dup.status;
      }
      wipeKeySet(ks);
      return dup.status;
    }
    const entry: KeyEntry = { ks, id, status: 'pending', failures: 0, dec: null, dec13: null };
    list.push(entry);
    this.keys.set(id, list);
    this.announceSrtp(id, time);
    if (!ks.clientAppTrafficSecret) this.judgeWithBacklog(entry, time);
    return entry.status;
  }

  /** Tag of the datagram whose records are being processed (-1: none given). */
  get currentTag(): number {
    return this.tagNow;
  }

  /** Bytes the session holds in its backlog copies (for memory accounting; owned views excluded). */
  get bufferedBytes(): number {
    return this.backlogCopied;
  }

  /** The newest association's id (no allocation, unlike associations()). */
  newestAssociation(): string | undefined {
    const a = this.assocs[this.assocs.length - 1];
    return a?.id;
  }

  /** Whether a verified key set of the association carries SRTP keys (RFC 5764 §4.2). */
  hasVerifiedSrtp(association: string): boolean {
    const list = this.keys.get(association);
    if (!list) return false;
    for (const e of list) if (e.status === 'verified' && e.ks.srtpProfile !== undefined) return true;
    return false;
  }

  /** Drops every held record (the flow goes on uninspected, or memory is short). */
  dropBacklog(): void {
    this.backlog = [];
    this.backlogBytes = 0;
    this.backlogCopied = 0;
  }

  keyStatus(association: string): KeyStatus | undefined {
    const list = this.keys.get(association);
    if (!list || !list.length) return undefined;
    if (list.some((e) => e.status === 'verified')) return 'verified';
    if (list.some((e) => e.status === 'pending')) return 'pending';
    return 'invalid';
  }

  srtpKeys(association: string): SrtpKeyMaterial | undefined {
    const list = this.keys.get(association) ?? [];
    const e =
      list.find((x) => x.status === 'verified' && x.ks.srtpProfile !== undefined) ??
      list.find((x) => x.status === 'pending' && x.ks.srtpProfile !== undefined);
    if (!e) return undefined;
    const k = e.ks;
    return {
      profile: k.srtpProfile!,
      clientMasterKey: k.srtpClientMasterKey!,
      serverMasterKey: k.srtpServerMasterKey!,
      clientMasterSalt: k.srtpClientMasterSalt!,
      serverMasterSalt: k.srtpServerMasterSalt!,
    };
  }

  associations(): AssociationInfo[] {
    return this.assocs.map((a) => ({
      id: a.id,
      version: a.version,
      cipherSuite: a.cipherSuite,
      epoch: a.epoch,
      srtpProfile: a.srtpProfile,
      encryptThenMac: a.encryptThenMac,
      extendedMasterSecret: a.extendedMasterSecret,
      completed: a.completed,
      keyStatus: this.keyStatus(a.id),
      serverRandom: a.serverRandom?.toString('hex'),
      srtpOffered: a.clientHello.srtpProfiles.length > 0,
      hasSrtpKeys: this.srtpKeys(a.id) !== undefined,
    }));
  }

  flush(time: number): void {
    for (const [reason, u] of this.undec) {
      if (u.pending > 0) this.emitUndecryptable(reason, u, time);
    }
  }

  close(): void {
    this.closed = true;
    for (const list of this.keys.values()) for (const e of list) this.wipeEntry(e);
    this.keys.clear();
    this.dropBacklog();
    this.reassemblers.clear();
    this.fast = null;
  }

  // ---------------------------------------------------------------- records

  private onPlaintext(r: DtlsRecord, raw: Direction, time: number): void {
    if (r.type === CT_HANDSHAKE) this.onHandshakeFragments(r.fragment, raw, 0, time);
    // RFC 6347 §4.1: CCS and alerts at epoch 0 carry nothing we need; application data
    // is never sent at epoch 0 (RFC 5246 §7.1 requires keys first).
    else if (r.type === CT_APPLICATION_DATA) this.undecryptable('malformed', raw, time, undefined);
  }

  /**
   * Records at epoch >= 1: protected by that epoch's keys (RFC 6347 §4.1). Returns false when
   * the record stays held (no keys yet).
   */
  private onProtected(r: DtlsRecord, raw: Direction, time: number, fromBacklog: boolean): boolean {
    // Closed meanwhile (a listener blocked the flow while held records were re-processed).
    if (this.closed) return true;
    // A ChangeCipherSpec carries one byte of no interest (RFC 5246 §7.1); in a renegotiation it
    // is protected by the old epoch. It is not needed to follow the handshake, but it must
    // authenticate like any protected record, or it is a channel nobody inspects.
    if (r.type === CT_CHANGE_CIPHER_SPEC) {
      if (fromBacklog) return true;
      const ccs = this.decrypt(r, raw, time);
      if (typeof ccs === 'string') this.lastUnauthenticated++;
      else this.onAuthenticated?.(this.tagNow);
      return true;
    }
    const res = this.decrypt(r, raw, time);
    if (typeof res === 'string') {
      if (!fromBacklog) this.lastUnauthenticated++;
      const a = this.assocForEpoch(r.epoch);
      const dir = a ? this.roleDir(a, raw) : raw;
      if (res === 'no_keys' && r.type === CT_HANDSHAKE && a && !fromBacklog) this.handshakeHeuristic(a, r, dir, time);
      // Keep what no verified key covers, for keys that arrive later (key-escrow.md §5.1 hold).
      const kept = res !== 'failed' && !fromBacklog && this.hold(r, raw, time);
      if (kept && res === 'no_keys' && this.opts.reportHeld === false) return false;
      this.undecryptable(res === 'no_keys' ? 'no_keys' : 'auth_failed', dir, time, a?.id);
      return res === 'failed'; // a record that verified keys reject is consumed (dropped), not held
    }
    const { plaintext, dir, id } = res;
    this.stats.decrypted++;
    this.onAuthenticated?.(this.tagNow);
    const a = this.assocs.find((x) => x.id === id);
    if (r.type === CT_APPLICATION_DATA) {
      this.stats.appDataBytes += plaintext.length;
      if (a) a.completed = true; // application data implies the Finished exchange is over
      this.opts.onAppData?.(plaintext, dir, id, time);
    } else if (r.type === CT_HANDSHAKE) {
      const rawDir = a ? (dir === 'c2s' ? a.clientSide : flip(a.clientSide)) : raw;
      // Handshake messages may be kept (fragments reassembled): never a borrowed view.
      this.onHandshakeFragments(this.plaintextInto ? Buffer.from(plaintext) : plaintext, rawDir, r.epoch, time);
    }
    return true;
  }

  private onUnified(r: DtlsRecord, datagram: Buffer, raw: Direction, time: number): void {
    if (this.closed) return;
    const a = this.latestAssoc();
    const dir = a ? this.roleDir(a, raw) : raw;
    const factory = this.opts.dtls13 === undefined ? defaultDtls13Opener : this.opts.dtls13;
    const unauthenticated = () => {
      if ((r.epoch & 3) === 2) this.lastUnauthenticatedHandshake++;
      else this.lastUnauthenticated++;
    };
    if (!factory) {
      unauthenticated();
      this.undecryptable('dtls13_unsupported', dir, time, a?.id);
      return;
    }
    const cands = this.candidateEntries(a, true);
    if (!cands.length) {
      unauthenticated();
      if (!(this.opts.reportHeld === false)) this.undecryptable('no_keys', dir, time, a?.id);
      return;
    }
    for (const e of cands) {
      if (!e.dec13) e.dec13 = factory(e.ks);
      if (!e.dec13) continue;
      // Roles from the handshake, or both ways for keys of a handshake this flow did not show.
      const dirs: Direction[] = a && a.id === e.id ? [dir] : [raw, flip(raw)];
      for (const d of dirs) {
        const out = e.dec13.open(datagram, r, d);
        if (!out) continue;
        this.markVerified(e, d, time);
        this.stats.decrypted++;
        this.onAuthenticated?.(this.tagNow);
        if (out.type === CT_APPLICATION_DATA) {
          this.stats.appDataBytes += out.plaintext.length;
          if (a && a.id === e.id) a.completed = true;
          this.opts.onAppData?.(out.plaintext, d, e.id, time);
        } else if (out.type === CT_HANDSHAKE && a && a.id === e.id) {
          // RFC 9147 §5.2: DTLS 1.3 handshake messages keep the 12-byte DTLS header.
          this.onHandshakeFragments(out.plaintext, d === 'c2s' ? a.clientSide : flip(a.clientSide), 2, time);
        }
        return;
      }
    }
    // Only a record of the key set's own (application) epoch bits can condemn it: handshake
    // epoch records legitimately fail with application secrets (RFC 9147 §4: low epoch bits).
    if (!cands.some((e) => e.status === 'verified')) {
      for (const e of cands) {
        if (e.status === 'pending' && (r.epoch & 3) === (e.ks.epoch & 3) && ++e.failures >= this.invalidAfter)
          this.markInvalid(e, raw, time, 'record did not authenticate');
      }
    }
    unauthenticated();
    this.undecryptable('auth_failed', dir, time, a?.id);
  }

  /**
   * Tries the key sets that may cover the record's epoch, verified ones first.
   * 'no_keys': none; 'failed': a verified key set exists and the record does not
   * authenticate (tampered or garbage); 'failed_unverified': only pending ones, all failed.
   */
  private decrypt(
    r: DtlsRecord,
    raw: Direction,
    time: number,
  ): 'no_keys' | 'failed' | 'failed_unverified' | { plaintext: Buffer; dir: Direction; id: string } {
    // Fast path: the key set that decrypted the previous record of this epoch.
    const f = this.fast;
    if (f && f.epoch === r.epoch && f.entry.status === 'verified' && f.entry.dec) {
      const d: Direction = raw === f.clientSide ? 'c2s' : 's2c';
      const pt = f.entry.dec[d].decrypt(r.type, r.version, r.epoch, r.seq, r.fragment);
      if (pt) return { plaintext: pt, dir: d, id: f.entry.id };
    }
    const a = this.assocForEpoch(r.epoch);
    if (a) this.tryKeyLog(a, time);
    const cands = this.candidatesForEpoch(r.epoch);
    if (!cands.length) return 'no_keys';
    for (const e of cands) {
      const out = this.tryEntry(e, r, raw);
      if (out) {
        this.markVerified(e, out.dir, time);
        this.fast = { epoch: r.epoch, entry: e, clientSide: out.dir === 'c2s' ? raw : flip(raw) };
        return { plaintext: out.plaintext, dir: out.dir, id: e.id };
      }
    }
    if (cands.some((e) => e.status === 'verified')) return 'failed';
    // Nothing authenticated: pending key sets that failed are reported (key-escrow.md §5.2).
    for (const e of cands) {
      if (e.status === 'pending' && ++e.failures >= this.invalidAfter) this.markInvalid(e, raw, time, 'record did not authenticate');
    }
    return 'failed_unverified';
  }

  /** Decrypts with one key set. Roles known from the handshake give one direction; keys for
   * a handshake this flow did not show are tried both ways (the one that authenticates tells). */
  private tryEntry(e: KeyEntry, r: DtlsRecord, raw: Direction): { plaintext: Buffer; dir: Direction } | null {
    if (!e.dec) e.dec = makeDecryptors(e.ks, this.plaintextInto);
    if (!e.dec) return null;
    const a = this.assocs.find((x) => x.id === e.id);
    const first: Direction = a ? this.roleDir(a, raw) : raw;
    let pt = e.dec[first].decrypt(r.type, r.version, r.epoch, r.seq, r.fragment);
    if (pt) return { plaintext: pt, dir: first };
    if (a) return null;
    pt = e.dec[flip(first)].decrypt(r.type, r.version, r.epoch, r.seq, r.fragment);
    return pt ? { plaintext: pt, dir: flip(first) } : null;
  }

  // ---------------------------------------------------------------- handshake

  private onHandshakeFragments(buf: Buffer, raw: Direction, epoch: number, time: number): void {
    let off = 0;
    while (off < buf.length) {
      const body = readHandshakeHeader(buf, off, this.hh);
      if (body < 0) {
        this.undecryptable('malformed', raw, time, undefined);
        return;
      }
      const frag = buf.subarray(body, body + this.hh.fragmentLength);
      off = body + this.hh.fragmentLength;
      const key = `${raw}:${epoch}`;
      let ra = this.reassemblers.get(key);
      if (!ra) {
        if (this.reassemblers.size >= 8) this.reassemblers.delete(this.reassemblers.keys().next().value!);
        ra = new HandshakeReassembler(16384, 4, WANTED);
        this.reassemblers.set(key, ra);
      }
      const msg = ra.add(this.hh, frag);
      if (msg) this.onHandshakeMessage(msg, raw, epoch, time);
    }
  }

  private onHandshakeMessage(m: HandshakeMessage, raw: Direction, epoch: number, time: number): void {
    switch (m.msgType) {
      case HT_CLIENT_HELLO:
        return this.onClientHello(m.body, raw, epoch, time);
      case HT_SERVER_HELLO:
        return this.onServerHello(m.body, raw, epoch, time);
      case HT_FINISHED: {
        // Only seen here when decrypted (Finished is always protected, RFC 5246 §7.4.9).
        const a = this.assocForEpoch(epoch);
        if (!a) return;
        const d = this.roleDir(a, raw);
        if (a.finishedLen[d] < 0) a.finishedLen[d] = 0;
        if (a.finishedLen.c2s >= 0 && a.finishedLen.s2c >= 0) a.completed = true;
        return;
      }
      case HT_ENCRYPTED_EXTENSIONS: {
        // DTLS 1.3 (RFC 8446 §4.3.1): the server's use_srtp choice, readable with the
        // handshake traffic secrets. Once known, the SRTP keys can be exported.
        const a = this.assocs.find((x) => x.version === 'DTLS1.3' && x.clientSide !== raw && x.srtpProfile === undefined);
        const ee = parseEncryptedExtensions(m.body);
        if (!a || !ee || ee.srtpProfiles.length !== 1 || a.clientHello.srtpProfiles.length === 0) return;
        a.srtpProfile = ee.srtpProfiles[0];
        a.keylogVersion = -1; // derive again, now with the SRTP profile
        this.tryKeyLog(a, time);
        return;
      }
      default:
        return; // HelloRequest alone starts nothing; the ClientHello that follows does.
    }
  }

  private onClientHello(body: Buffer, raw: Direction, epoch: number, time: number): void {
    const ch = parseClientHello(body);
    if (!ch) {
      this.undecryptable('malformed', raw, time, undefined);
      return;
    }
    const id = associationId(ch.random);
    const same = this.assocs.find((a) => a.id === id);
    if (same) {
      // RFC 6347 §4.2.1: the ClientHello after HelloVerifyRequest repeats the random (and a
      // retransmission is identical): same handshake, not a new association.
      same.clientHello = ch;
      return;
    }
    const previous = epoch >= 1 ? this.assocForEpoch(epoch) : this.latestAssoc();
    const a: Assoc = {
      id,
      clientRandom: ch.random,
      clientSide: raw,
      clientHello: ch,
      version: 'DTLS1.2',
      hsEpoch: epoch,
      // RFC 6347 §4.1: the handshake runs in epoch N, its ChangeCipherSpec moves to N+1.
      epoch: epoch + 1,
      encryptThenMac: false,
      extendedMasterSecret: false,
      finishedLen: { c2s: -1, s2c: -1 },
      completed: false,
      renegotiationSeen: false,
      keylogVersion: -1,
      srtpAnnounced: false,
    };
    this.addAssoc(a, time);
    if (previous && (previous.completed || epoch >= 1)) {
      // A new handshake after a completed one (plain ClientHello), or a ClientHello inside
      // the protected handshake (DTLS 1.2 renegotiation, RFC 5246 §7.4.1.2): new association.
      if (!previous.renegotiationSeen || epoch === 0) {
        this.emit({
          type: 'dtls.renegotiation',
          how: epoch >= 1 ? 'encrypted_handshake' : 'client_hello',
          time,
          dir: 'c2s',
          association: id,
        });
      }
      previous.renegotiationSeen = true;
    }
  }

  private onServerHello(body: Buffer, raw: Direction, epoch: number, time: number): void {
    const sh = parseServerHello(body);
    if (!sh) {
      this.undecryptable('malformed', raw, time, undefined);
      return;
    }
    if (sh.helloRetryRequest) return; // RFC 8446 §4.1.4: the client answers with a new ClientHello (same random)
    // The newest association in this handshake epoch whose client is on the other side.
    let a: Assoc | undefined;
    for (let i = this.assocs.length - 1; i >= 0; i--) {
      const x = this.assocs[i]!;
      if (x.clientSide !== raw && x.hsEpoch === epoch) {
        a = x;
        break;
      }
    }
    if (!a) return; // ServerHello without its ClientHello: nothing to attach to
    if (a.serverRandom) return; // retransmission (or a second ServerHello: ignore)
    a.serverRandom = sh.random;
    a.cipherSuite = sh.cipherSuite;
    if (sh.version === DTLS_1_3) {
      // RFC 9147 §5 / §6.1: DTLS 1.3 protects the handshake at epoch 2, application data at 3.
      a.version = 'DTLS1.3';
      a.epoch = 3;
    } else {
      // RFC 7366 §2 / RFC 7627 §5.1: in effect only when both hellos carry the extension.
      a.encryptThenMac = a.clientHello.encryptThenMac && sh.encryptThenMac && cipherSuiteInfo(sh.cipherSuite)?.kind === 'cbc';
      a.extendedMasterSecret = a.clientHello.extendedMasterSecret && sh.extendedMasterSecret;
    }
    // RFC 5764 §4.1.1: the server selects one profile from the client's list.
    if (sh.srtpProfiles.length === 1 && a.clientHello.srtpProfiles.length > 0) a.srtpProfile = sh.srtpProfiles[0];
    this.emit({
      type: 'dtls.handshake',
      version: a.version,
      clientRandom: a.id,
      serverRandom: sh.random.toString('hex'),
      cipherSuite: sh.cipherSuite,
      srtpProfile: a.srtpProfile,
      encryptThenMac: a.version === 'DTLS1.2' ? a.encryptThenMac : undefined,
      extendedMasterSecret: a.version === 'DTLS1.2' ? a.extendedMasterSecret : undefined,
      time,
      dir: 's2c',
      association: a.id,
    });
    this.tryKeyLog(a, time);
    this.announceSrtp(a.id, time);
  }

  /**
   * Protected handshake record without keys (RFC 6347 §4.1): the first one each direction
   * sends in the epoch is its Finished; later ones of another length, once both Finished
   * were seen, mean a renegotiation (a retransmitted Finished has the same length).
   */
  private handshakeHeuristic(a: Assoc, r: DtlsRecord, dir: Direction, time: number): void {
    const len = r.fragment.length;
    if (a.finishedLen[dir] < 0) {
      a.finishedLen[dir] = len;
      if (a.finishedLen.c2s >= 0 && a.finishedLen.s2c >= 0) a.completed = true;
      return;
    }
    if (a.completed && len !== a.finishedLen[dir] && !a.renegotiationSeen) {
      a.renegotiationSeen = true;
      this.emit({ type: 'dtls.renegotiation', how: 'encrypted_handshake', time, dir, association: a.id });
    }
  }

  // ---------------------------------------------------------------- helpers

  private addAssoc(a: Assoc, time: number): void {
    if (this.assocs.length >= this.maxAssoc) {
      const old = this.assocs.shift()!;
      for (const e of this.keys.get(old.id) ?? []) this.wipeEntry(e);
      this.keys.delete(old.id);
      this.emit({ type: 'cap.hit', what: 'dtls.associations', limit: this.maxAssoc, time });
    }
    this.assocs.push(a);
  }

  private latestAssoc(): Assoc | undefined {
    return this.assocs[this.assocs.length - 1];
  }

  /** The newest association whose keys protect `epoch`. */
  private assocForEpoch(epoch: number): Assoc | undefined {
    for (let i = this.assocs.length - 1; i >= 0; i--) if (this.assocs[i]!.epoch === epoch) return this.assocs[i];
    return undefined;
  }

  private roleDir(a: Assoc, raw: Direction): Direction {
    return raw === a.clientSide ? 'c2s' : 's2c';
  }

  /**
   * Key sets that may protect a DTLS 1.2 record of `epoch`: those of associations at that
   * epoch (newest first), then key sets for handshakes this flow never showed. Verified first.
   */
  private candidatesForEpoch(epoch: number): KeyEntry[] {
    const out: KeyEntry[] = [];
    for (let i = this.assocs.length - 1; i >= 0; i--) {
      const a = this.assocs[i]!;
      if (a.epoch !== epoch) continue;
      for (const e of this.keys.get(a.id) ?? [])
        if (e.ks.epoch === epoch && e.status !== 'invalid' && !e.ks.clientAppTrafficSecret) out.push(e);
    }
    for (const [id, list] of this.keys) {
      if (this.assocs.some((a) => a.id === id)) continue;
      for (const e of list) if (e.ks.epoch === epoch && e.status !== 'invalid' && !e.ks.clientAppTrafficSecret) out.push(e);
    }
    return out.sort((x, y) => (x.status === 'verified' ? 0 : 1) - (y.status === 'verified' ? 0 : 1));
  }

  private candidateEntries(a: Assoc | undefined, tls13: boolean): KeyEntry[] {
    const out: KeyEntry[] = [];
    const ids = a ? [a.id] : [...this.keys.keys()];
    for (const id of ids)
      for (const e of this.keys.get(id) ?? []) if (e.status !== 'invalid' && !!e.ks.clientAppTrafficSecret === tls13) out.push(e);
    return out.sort((x, y) => (x.status === 'verified' ? 0 : 1) - (y.status === 'verified' ? 0 : 1));
  }

  private tryKeyLog(a: Assoc, time: number): void {
    const kl = this.opts.keyLog;
    if (!kl || !a.serverRandom || a.cipherSuite === undefined || a.keylogVersion === kl.version) return;
    a.keylogVersion = kl.version;
    const entry = kl.get(a.id);
    if (!entry) return;
    const ks = keySetFromKeyLog(
      entry,
      {
        version: a.version,
        clientRandom: a.clientRandom,
        serverRandom: a.serverRandom,
        cipherSuite: a.cipherSuite,
        encryptThenMac: a.encryptThenMac,
        srtpProfile: a.srtpProfile,
      },
      a.epoch,
    );
    if (!ks) return;
    this.addKeySet(ks, time);
    wipeKeySet(ks);
  }

  private announceSrtp(id: string, time: number): void {
    if (!this.opts.onSrtpKeys) return;
    const a = this.assocs.find((x) => x.id === id);
    if (a?.srtpAnnounced) return;
    const m = this.srtpKeys(id);
    if (!m) return;
    if (a) a.srtpAnnounced = true;
    this.opts.onSrtpKeys(id, m, time);
  }

  private markVerified(e: KeyEntry, dir: Direction, time: number): void {
    if (e.status === 'verified') return;
    e.status = 'verified';
    e.failures = 0;
    this.emit({ type: 'keys.verified', what: 'dtls', time, dir, association: e.id });
  }

  private markInvalid(e: KeyEntry, dir: Direction, time: number, reason: string): void {
    e.status = 'invalid';
    const a = this.assocs.find((x) => x.id === e.id);
    this.emit({ type: 'keys.invalid', what: 'dtls', reason, time, dir: a ? this.roleDir(a, dir) : dir, association: e.id });
    // key-escrow.md §5.2: treated as absent; the secrets are no longer needed.
    this.wipeEntry(e);
  }

  private wipeEntry(e: KeyEntry): void {
    e.dec?.c2s.wipe();
    e.dec?.s2c.wipe();
    e.dec13?.wipe?.();
    e.dec = null;
    e.dec13 = null;
    wipeKeySet(e.ks);
  }

  /** Keeps a copy of a record that no key covers yet (capped, oldest kept). */
  /** Keeps a record for keys that may come later; false when it was not kept. */
  private hold(r: DtlsRecord, raw: Direction, time: number): boolean {
    if (r.type !== CT_APPLICATION_DATA && r.type !== CT_HANDSHAKE) return false;
    const size = r.fragment.length + r.header.length;
    if (this.backlog.length >= this.maxBacklogRecords || this.backlogBytes + size > this.maxBacklogBytes) {
      this.undecryptable('backlog_full', raw, time, undefined);
      return false;
    }
    let held: DtlsRecord;
    let copied = 0;
    if (this.ownedNow) {
      // The caller keeps this datagram (it is held): refer into it, no second copy.
      held = { ...r };
    } else {
      const copy = Buffer.from(r.header.length ? Buffer.concat([r.header, r.fragment]) : r.fragment);
      held = { ...r, header: copy.subarray(0, r.header.length), fragment: copy.subarray(r.header.length) };
      copied = size;
    }
    this.backlog.push({ rec: held, raw, time, tag: this.tagNow, copied });
    this.backlogBytes += size;
    this.backlogCopied += copied;
    return true;
  }

  /**
   * Keys for `entry`'s epoch arrived: judge them against the held records of that epoch
   * (verified if any authenticates, so one injected bad record cannot condemn good keys;
   * invalid if none does), then re-process the held records in arrival order.
   */
  private judgeWithBacklog(entry: KeyEntry, time: number): void {
    const epoch = entry.ks.epoch;
    const held = this.backlog.filter((h) => !h.rec.unified && h.rec.epoch === epoch);
    if (!held.length) return;
    let ok: Held | undefined;
    let okDir: Direction = 'c2s';
    for (const h of held) {
      const out = this.tryEntry(entry, h.rec, h.raw);
      if (out) {
        ok = h;
        okDir = out.dir;
        break;
      }
    }
    if (!ok) {
      this.markInvalid(entry, held[0]!.raw, time, 'held records did not authenticate');
      return;
    }
    this.markVerified(entry, okDir, ok.time);
    const keep: Held[] = [];
    const todo = this.backlog;
    const tagBefore = this.tagNow;
    this.dropBacklog();
    for (const h of todo) {
      if (this.closed) return;
      this.tagNow = h.tag;
      if (h.rec.unified || h.rec.epoch !== epoch || !this.onProtected(h.rec, h.raw, h.time, true)) keep.push(h);
    }
    this.tagNow = tagBefore;
    if (this.closed) return;
    // Records held meanwhile (none expected: processing is synchronous) go after the old ones.
    this.backlog = keep.concat(this.backlog);
    for (const h of this.backlog) {
      this.backlogBytes += h.rec.header.length + h.rec.fragment.length;
      this.backlogCopied += h.copied;
    }
  }

  private undecryptable(reason: UndecryptableReason, dir: Direction, time: number, association: string | undefined): void {
    this.stats.undecryptable[reason] = (this.stats.undecryptable[reason] ?? 0) + 1;
    let u = this.undec.get(reason);
    if (!u) {
      u = { pending: 0, last: -Infinity };
      this.undec.set(reason, u);
    }
    u.pending++;
    u.dir = dir;
    u.association = association;
    if (time - u.last >= this.interval) this.emitUndecryptable(reason, u, time);
  }

  private emitUndecryptable(
    reason: string,
    u: { pending: number; last: number; dir?: Direction; association?: string },
    time: number,
  ): void {
    const ev: InspectEvent = { type: 'undecryptable', what: 'dtls', reason, count: u.pending, time, dir: u.dir };
    if (u.association) ev.association = u.association;
    this.emit(ev);
    u.pending = 0;
    u.last = time;
  }
}

/** `into`: DtlsDecryptorOptions.plaintextInto (DtlsSessionOptions.plaintextInto). */
function makeDecryptors(ks: KeySet, into?: Buffer): { c2s: DtlsRecordDecryptor; s2c: DtlsRecordDecryptor } | null {
  if (!ks.clientWriteKey || !ks.serverWriteKey) return null;
  const opts = into ? { plaintextInto: into } : {};
  try {
    return {
      c2s: new DtlsRecordDecryptor(
        ks.cipherSuite,
        { key: ks.clientWriteKey, iv: ks.clientWriteIv, macKey: ks.clientMacKey, encryptThenMac: ks.encryptThenMac },
        opts,
      ),
      s2c: new DtlsRecordDecryptor(
        ks.cipherSuite,
        { key: ks.serverWriteKey, iv: ks.serverWriteIv, macKey: ks.serverMacKey, encryptThenMac: ks.encryptThenMac },
        opts,
      ),
    };
  } catch {
    return null;
  }
}

function cloneKeySet(ks: KeySet): KeySet {
  const out = { ...ks } as Record<string, unknown>;
  for (const [k, v] of Object.entries(out)) if (Buffer.isBuffer(v)) out[k] = Buffer.from(v);
  return out as unknown as KeySet;
}

function sameKeys(a: KeySet, b: KeySet): boolean {
  const eq = (x?: Buffer, y?: Buffer): boolean => (!x && !y) || (!!x && !!y && x.equals(y));
  return (
    a.cipherSuite === b.cipherSuite &&
    a.encryptThenMac === b.encryptThenMac &&
    eq(a.serverRandom, b.serverRandom) &&
    eq(a.clientWriteKey, b.clientWriteKey) &&
    eq(a.serverWriteKey, b.serverWriteKey) &&
    eq(a.clientMacKey, b.clientMacKey) &&
    eq(a.clientWriteIv, b.clientWriteIv) &&
    eq(a.clientAppTrafficSecret, b.clientAppTrafficSecret)
  );
}
