/**
 * WebM (the Matroska subset browsers play, https://www.webmproject.org/docs/container/)
 * for one VP8 video track. EBML is RFC 8794, Matroska RFC 9559; element IDs below are
 * those of RFC 9559 §5.1 (EBML header ones RFC 8794 §11.2).
 *
 * Layout written (all offsets known up front except the sizes of Segment and Clusters):
 *
 *   EBML header (DocType webm, DocTypeVersion 4, DocTypeReadVersion 2)
 *   Segment, size unknown (RFC 8794 §6.2: all VINT_DATA bits 1)
 *     SeekHead: Seek(Info), Seek(Tracks), Void (becomes Seek(Cues) at close)
 *     Info: TimestampScale 1 ms, MuxingApp, WritingApp, Void (becomes Duration at close)
 *     Tracks: TrackEntry 1, video, V_VP8, PixelWidth/PixelHeight of the first key frame
 *     Cluster, size unknown: Timestamp, SimpleBlock...   (one unit per SimpleBlock)
 *     ...
 *     Cues (at close): a CuePoint per Cluster that starts with a key frame
 *
 * Crash safety: every unit handed to the UnitFile is whole elements, so a file cut at a
 * unit boundary (kill -9) is a valid WebM with unknown-size Segment and last Cluster,
 * which ffmpeg and Chromium play. At close the writer appends Cues and patches, in
 * place (UnitFile.patch: positional writes after the last unit), the Voids into
 * Duration and Seek(Cues), each Cluster's size and the Segment's size. Patches keep the
 * byte length (sizes are always 8-byte VINTs), so a crash during them leaves a mix of
 * known and unknown sizes, which is still valid EBML.
 */
import { randomBytes } from 'node:crypto';

export const ID = {
  EBML: 0x1a45dfa3,
  EBMLVersion: 0x4286,
  EBMLReadVersion: 0x42f7,
  EBMLMaxIDLength: 0x42f2,
  EBMLMaxSizeLength: 0x42f3,
  DocType: 0x4282,
  DocTypeVersion: 0x4287,
  DocTypeReadVersion: 0x4285,
  Void: 0xec,
  Segment: 0x18538067,
  SeekHead: 0x114d9b74,
  Seek: 0x4dbb,
  SeekID: 0x53ab,
  SeekPosition: 0x53ac,
  Info: 0x1549a966,
  TimestampScale: 0x2ad7b1,
  Duration: 0x4489,
  MuxingApp: 0x4d80,
  WritingApp: 0x5741,
  Tracks: 0x1654ae6b,
  TrackEntry: 0xae,
  TrackNumber: 0xd7,
  TrackUID: 0x73c5,
  TrackType: 0x83,
  FlagLacing: 0x9c,
  CodecID: 0x86,
  Video: 0xe0,
  PixelWidth: 0xb0,
  PixelHeight: 0xba,
  Cluster: 0x1f43b675,
  Timestamp: 0xe7,
  SimpleBlock: 0xa3,
  Cues: 0x1c53bb6b,
  CuePoint: 0xbb,
  CueTime: 0xb3,
  CueTrackPositions: 0xb7,
  CueTrack: 0xf7,
  CueClusterPosition: 0xf1,
  CueRelativePosition: 0xf0,
} as const;

/** RFC 8794 §6.2: an 8-octet size VINT with every VINT_DATA bit set means "unknown size". */
export const EBML_UNKNOWN_SIZE = Buffer.from([0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);

/** An Element ID (RFC 8794 §5: written with its VINT_MARKER, 1 to 4 octets). */
export function ebmlId(id: number): Buffer {
  const len = id >= 0x1000000 ? 4 : id >= 0x10000 ? 3 : id >= 0x100 ? 2 : 1;
  const b = Buffer.alloc(len);
  b.writeUIntBE(id, 0, len);
  return b;
}

/**
 * An Element Data Size as a VINT (RFC 8794 §4): `len` octets (the shortest when not
 * given). The all-ones value of each length is reserved (unknown size), so a length of
 * L octets holds at most 2^(7L) - 2.
 */
export function vintSize(n: number, len?: number): Buffer {
  if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`bad EBML size ${n}`);
  let l = len ?? 1;
  if (len === undefined) while (l < 8 && n > 2 ** (7 * l) - 2) l++;
  if (l < 1 || l > 8 || n > 2 ** (7 * l) - 2) throw new RangeError(`EBML size ${n} does not fit ${l} octets`);
  const b = Buffer.alloc(l);
  let v = BigInt(n) | (1n << BigInt(7 * l)); // VINT_MARKER after l-1 zero bits
  for (let i = l - 1; i >= 0; i--) {
    b[i] = Number(v & 0xffn);
    v >>= 8n;
  }
  return b;
}

export function element(id: number, ...data: Buffer[]): Buffer {
  const body = data.length === 1 ? data[0]! : Buffer.concat(data);
  return Buffer.concat([ebmlId(id), vintSize(body.length), body]);
}

/** Unsigned integer element (RFC 8794 §7.2: big-endian, shortest unless `len`). */
export function uintElement(id: number, v: number | bigint, len?: number): Buffer {
  let x = BigInt(v);
  if (x < 0n) throw new RangeError('negative uint');
  let l = len ?? 1;
  if (len === undefined) while (l < 8 && x >> BigInt(8 * l) !== 0n) l++;
  const b = Buffer.alloc(l);
  for (let i = l - 1; i >= 0; i--) {
    b[i] = Number(x & 0xffn);
    x >>= 8n;
  }
  return element(id, b);
}

/** Float element (RFC 8794 §7.3): 8 octets, IEEE 754 binary64 big-endian. */
export function floatElement(id: number, v: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeDoubleBE(v);
  return element(id, b);
}

export function stringElement(id: number, s: string): Buffer {
  return element(id, Buffer.from(s, 'utf8'));
}

/** A Void element (RFC 8794 §11.3.1) of exactly `total` octets, header included (2..127+2). */
export function voidElement(total: number): Buffer {
  if (total < 2 || total > 128) throw new RangeError('void size');
  return Buffer.concat([ebmlId(ID.Void), vintSize(total - 2, 1), Buffer.alloc(total - 2)]);
}

/** A Seek entry of fixed length (21 octets): SeekPosition as an 8-octet uint. */
function seekEntry(target: number, pos: number): Buffer {
  return element(ID.Seek, element(ID.SeekID, ebmlId(target)), uintElement(ID.SeekPosition, pos, 8));
}
const SEEK_ENTRY_BYTES = 21;
/** A Duration element: ID (2) + size (1) + binary64 (8). */
const DURATION_BYTES = 11;

/** Longest span of one Cluster (ms): a new one starts at a key frame or after this. */
export const WEBM_CLUSTER_MAX_MS = 5000;
/**
 * Clusters remembered for Cues and for patching their sizes at close (bounded: 64Ki
 * clusters is at least 91 hours at one per 5 s). Later clusters keep an unknown size and
 * get no CuePoint.
 */
export const WEBM_MAX_CLUSTERS = 65536;

export interface WebmTrack {
  width: number;
  height: number;
  /** Matroska TrackUID (nonzero); random when not given. */
  uid?: bigint;
  app?: string;
}

interface ClusterMark {
  /** Offset of the Cluster element in the file. */
  offset: number;
  /** Cluster Timestamp (ms). */
  time: number;
  key: boolean;
}

/**
 * Builds the bytes of a WebM file of one VP8 track incrementally: header() first, then
 * frame() per frame (each returns whole elements, one file unit), and at close
 * finish() gives the trailing Cues and the patches (offset, bytes) to apply in place.
 * Timestamps are milliseconds (TimestampScale 1 ms), strictly increasing.
 */
export class WebmMuxer {
  /** Bytes produced so far (the file offset of the next unit). */
  pos = 0;
  private segData = 0;
  private seekVoidAt = 0;
  private durationAt = 0;
  private clusters: ClusterMark[] = [];
  private clusterTime = -1;
  /** Offset of the first Cluster beyond WEBM_MAX_CLUSTERS (-1: none), where the last remembered one ends. */
  private overflowAt = -1;
  private firstTime = -1;
  private lastTime = -1;
  frames = 0;

  header(t: WebmTrack): Buffer {
    const app = t.app ?? 'gatehouse';
    const ebml = element(
      ID.EBML,
      uintElement(ID.EBMLVersion, 1),
      uintElement(ID.EBMLReadVersion, 1),
      uintElement(ID.EBMLMaxIDLength, 4),
      uintElement(ID.EBMLMaxSizeLength, 8),
      stringElement(ID.DocType, 'webm'),
      // SimpleBlock needs DocTypeReadVersion 2 (RFC 9559 §5.1.3.5.2); 4 as ffmpeg writes.
      uintElement(ID.DocTypeVersion, 4),
      uintElement(ID.DocTypeReadVersion, 2),
    );
    const segHead = Buffer.concat([ebmlId(ID.Segment), EBML_UNKNOWN_SIZE]);
    const info = element(
      ID.Info,
      uintElement(ID.TimestampScale, 1_000_000), // ns per timestamp unit: 1 ms
      stringElement(ID.MuxingApp, app),
      stringElement(ID.WritingApp, app),
      voidElement(DURATION_BYTES),
    );
    let uid = t.uid ?? BigInt('0x' + randomBytes(7).toString('hex')) + 1n;
    if (uid === 0n) uid = 1n;
    const tracks = element(
      ID.Tracks,
      element(
        ID.TrackEntry,
        uintElement(ID.TrackNumber, 1),
        uintElement(ID.TrackUID, uid),
        uintElement(ID.TrackType, 1), // video
        uintElement(ID.FlagLacing, 0),
        stringElement(ID.CodecID, 'V_VP8'),
        element(ID.Video, uintElement(ID.PixelWidth, t.width), uintElement(ID.PixelHeight, t.height)),
      ),
    );
    // SeekHead: positions relative to the first octet of the Segment's data (RFC 9559 §5.1.1.1.2).
    const seekHeadLen = 4 + 1 + 3 * SEEK_ENTRY_BYTES;
    const infoPos = seekHeadLen;
    const tracksPos = infoPos + info.length;
    const seekHead = element(ID.SeekHead, seekEntry(ID.Info, infoPos), seekEntry(ID.Tracks, tracksPos), voidElement(SEEK_ENTRY_BYTES));
    if (seekHead.length !== seekHeadLen) throw new Error('SeekHead length');
    this.segData = ebml.length + segHead.length;
    this.seekVoidAt = this.segData + seekHeadLen - SEEK_ENTRY_BYTES;
    this.durationAt = this.segData + infoPos + info.length - DURATION_BYTES;
    const out = Buffer.concat([ebml, segHead, seekHead, info, tracks]);
    this.pos = out.length;
    return out;
  }

  /** Offset of the Segment's data (for the positions of SeekHead and Cues). */
  get segmentDataOffset(): number {
    return this.segData;
  }

  /**
   * One frame at `time` ms (strictly after the previous one): a SimpleBlock, preceded by
   * a new Cluster at a key frame, after WEBM_CLUSTER_MAX_MS, or when the block's relative
   * timestamp would not fit its signed 16 bits (RFC 9559 §10.2).
   */
  frame(data: Buffer, time: number, key: boolean): Buffer {
    const parts: Buffer[] = [];
    if (this.clusterTime < 0 || key || time - this.clusterTime > WEBM_CLUSTER_MAX_MS || time - this.clusterTime > 0x7fff) {
      this.clusterTime = time;
      if (this.clusters.length < WEBM_MAX_CLUSTERS) this.clusters.push({ offset: this.pos, time, key });
      else if (this.overflowAt < 0) this.overflowAt = this.pos;
      parts.push(ebmlId(ID.Cluster), EBML_UNKNOWN_SIZE, uintElement(ID.Timestamp, time));
    }
    // RFC 9559 §10.2 SimpleBlock: track number (VINT), int16 timestamp relative to the
    // Cluster's, flags (0x80 keyframe; no lacing), the frame.
    const hdr = Buffer.alloc(4);
    hdr[0] = 0x81; // track 1
    hdr.writeInt16BE(time - this.clusterTime, 1);
    hdr[3] = key ? 0x80 : 0x00;
    parts.push(ebmlId(ID.SimpleBlock), vintSize(hdr.length + data.length), hdr, data);
    const out = Buffer.concat(parts);
    this.pos += out.length;
    if (this.firstTime < 0) this.firstTime = time;
    this.lastTime = time;
    this.frames++;
    return out;
  }

  /**
   * The end of the file: the Cues element to append, and the patches (in place, same
   * lengths) for Duration, Seek(Cues), the remembered Clusters' sizes and the Segment's.
   */
  finish(): { tail: Buffer; patches: { offset: number; data: Buffer }[] } {
    const patches: { offset: number; data: Buffer }[] = [];
    const cuePoints = this.clusters
      .filter((c) => c.key)
      .map((c) =>
        element(
          ID.CuePoint,
          uintElement(ID.CueTime, c.time),
          element(ID.CueTrackPositions, uintElement(ID.CueTrack, 1), uintElement(ID.CueClusterPosition, c.offset - this.segData)),
        ),
      );
    // Cluster sizes: each ends where the next remembered one starts, the last where the Cues do.
    for (let i = 0; i < this.clusters.length; i++) {
      const c = this.clusters[i]!;
      const end = this.clusters[i + 1]?.offset ?? (this.overflowAt >= 0 ? this.overflowAt : this.pos);
      patches.push({ offset: c.offset + 4, data: vintSize(end - c.offset - 4 - 8, 8) });
    }
    const tail = cuePoints.length ? element(ID.Cues, ...cuePoints) : Buffer.alloc(0);
    if (tail.length) patches.push({ offset: this.seekVoidAt, data: seekEntry(ID.Cues, this.pos - this.segData) });
    // Duration (in TimestampScale units): the last frame's time plus one mean frame interval.
    const step = this.frames > 1 ? (this.lastTime - this.firstTime) / (this.frames - 1) : 33;
    patches.push({ offset: this.durationAt, data: floatElement(ID.Duration, Math.max(0, this.lastTime) + step) });
    this.pos += tail.length;
    patches.push({ offset: this.segData - 8, data: vintSize(this.pos - this.segData, 8) });
    return { tail, patches };
  }
}
