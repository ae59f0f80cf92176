/**
 * Typed events emitted by the inspection engine (issue: inspection engine). Inspection
 * emits, policy decides (design.md). Events never carry key material: content is
 * summarised by size and SHA-256, plus a bounded preview where rules need text.
 *
 * `dir` is the direction of the packet that caused the event: 'c2s' is from the DTLS
 * client to the DTLS server (the side that sent ClientHello), 's2c' the reverse. Before
 * the roles are known, 'c2s' means "from the first sender".
 */
export type Direction = 'c2s' | 's2c';

export interface EventBase {
  /** Milliseconds since epoch, from the clock of the packet that caused it. */
  time: number;
  dir?: Direction;
  /** The association (client_random hex) the event belongs to, when known. */
  association?: string;
}

export interface DtlsHandshakeEvent extends EventBase {
  type: 'dtls.handshake';
  version: 'DTLS1.2' | 'DTLS1.3';
  clientRandom: string;
  serverRandom: string;
  cipherSuite: number;
  srtpProfile?: number;
  encryptThenMac?: boolean;
  extendedMasterSecret?: boolean;
}
export interface DtlsRenegotiationEvent extends EventBase {
  type: 'dtls.renegotiation';
  /** 'client_hello': a new ClientHello; 'encrypted_handshake': handshake at epoch >= 1. */
  how: 'client_hello' | 'encrypted_handshake';
}
export interface KeysVerifiedEvent extends EventBase {
  type: 'keys.verified';
  what: 'dtls' | 'srtp';
}
export interface KeysInvalidEvent extends EventBase {
  type: 'keys.invalid';
  what: 'dtls' | 'srtp';
  reason: string;
}
export interface DataChannelOpenEvent extends EventBase {
  type: 'datachannel.open';
  stream: number;
  label: string;
  protocol: string;
  channelType: number;
  ordered: boolean;
}
export interface DataChannelMessageEvent extends EventBase {
  type: 'datachannel.message';
  stream: number;
  label: string;
  ppid: number;
  size: number;
  sha256: string;
  /** Index of the message on its channel in its direction (0, 1, ...; issue 9: a transfer's message range). */
  index?: number;
  /** The message bytes; consumers must not log them. Omitted in serialised output. */
  data: Buffer;
}
export interface FileEvent extends EventBase {
  type: 'file';
  stream: number;
  label: string;
  size: number;
  sha256: string;
  fileType: string; // 'exe', 'elf', 'macho', 'msi', 'zip', 'pdf', 'png', ... or 'unknown'
  /**
   * The bytes (not serialised). For a transfer that was not spooled (`headOnly`), only its
   * first HEAD_BYTES: size and sha256 still cover the whole transfer.
   */
  data: Buffer;
  /** A single message that is a file: its index on the channel (as datachannel.message `index`). */
  index?: number;
  /** A file reassembled from consecutive binary messages (src/inspect/transfer.ts, issue 9). */
  /** A message of a transfer under way or announced (judged whole with the transfer's own `file` event). */
  inTransfer?: boolean;
  transfer?: {
    firstMessage: number;
    lastMessage: number;
    messages: number;
    /** What ended it: the announced size reached, a text message, a pause, the channel's close, max_file_bytes, eviction. */
    end: 'size' | 'text' | 'pause' | 'close' | 'limit' | 'evicted';
    /** The size a header announced (a hint, never trusted for verdicts). */
    announcedSize?: number;
  };
  /** The name a header announced (control characters removed, at most 255 characters). */
  name?: string;
  /** Over policy.max_file_bytes: size and sha256 cover what was seen up to there. */
  overLimit?: boolean;
  /** `data` holds the first bytes only (content not spooled). */
  headOnly?: boolean;
}
export interface AppDataEvent extends EventBase {
  type: 'appdata';
  size: number;
  /** Absent when the pipeline was asked not to hash application data (PipelineOptions.hashAppData). */
  sha256?: string;
  /** The record's plaintext; with PipelineOptions.plaintextInto valid only during the listener's call. */
  data: Buffer;
}
export interface RtpStreamEvent extends EventBase {
  type: 'rtp.stream';
  ssrc: number;
  payloadType: number;
  codec: string; // 'opus', 'vp8', 'vp9', 'h264', 'av1', 'pcmu', ... or 'unknown'
  kind: 'audio' | 'video' | 'unknown';
}
export interface RtpPacketEvent extends EventBase {
  type: 'rtp.packet';
  ssrc: number;
  payloadType: number;
  seq: number;
  /** Extended sequence number (ROC << 16 | seq), RFC 3711 §3.3.1. */
  index: number;
  timestamp: number;
  marker: boolean;
  payloadSize: number;
  /** Decrypted payload (header stripped); not serialised. */
  payload: Buffer;
  rtcp?: boolean;
}
export interface UndecryptableEvent extends EventBase {
  type: 'undecryptable';
  what: 'dtls' | 'srtp' | 'srtcp';
  reason: string;
  count: number;
}
export interface CapHitEvent extends EventBase {
  type: 'cap.hit';
  what: string;
  limit: number;
}

export type InspectEvent =
  | DtlsHandshakeEvent
  | DtlsRenegotiationEvent
  | KeysVerifiedEvent
  | KeysInvalidEvent
  | DataChannelOpenEvent
  | DataChannelMessageEvent
  | FileEvent
  | AppDataEvent
  | RtpStreamEvent
  | RtpPacketEvent
  | UndecryptableEvent
  | CapHitEvent;

export type EventListener = (e: InspectEvent) => void;
