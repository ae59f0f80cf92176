/**
 * Data Channel Establishment Protocol (RFC 8832), carried in SCTP user messages with
 * PPID 50 (RFC 8832 §8.1, RFC 8831 §8). Pure codec; decoders never throw.
 */

// RFC 8832 §8.2.1 Message Type registry.
export const DcepMessageType = {
  ACK: 0x02,
  OPEN: 0x03,
} as const;

// RFC 8832 §5.1 / §8.2.2 Channel Type registry. Bit 0x80 = unordered.
export const ChannelType = {
  RELIABLE: 0x00,
  RELIABLE_UNORDERED: 0x80,
  PARTIAL_RELIABLE_REXMIT: 0x01,
  PARTIAL_RELIABLE_REXMIT_UNORDERED: 0x81,
  PARTIAL_RELIABLE_TIMED: 0x02,
  PARTIAL_RELIABLE_TIMED_UNORDERED: 0x82,
} as const;

/**
 * RFC 8831 §8 SCTP Payload Protocol Identifiers used by WebRTC data channels.
 * 52 and 54 were deprecated by RFC 8831 (§8, "Binary/String Partial") but old
 * stacks still send large messages as a run of 52/54 messages closed by a 53/51.
 * PPID 0 is "unspecified" (RFC 9260 §3.3.1); the data channel layer treats it as
 * binary content.
 */
export const Ppid = {
  UNSPECIFIED: 0,
  DCEP: 50,
  STRING: 51,
  BINARY_PARTIAL: 52,
  BINARY: 53,
  STRING_PARTIAL: 54,
  STRING_EMPTY: 56,
  BINARY_EMPTY: 57,
} as const;

/** RFC 8831 §6.6: empty messages are sent as one byte (ignored) with PPID 56/57. */
export function isEmptyPpid(ppid: number): boolean {
  return ppid === Ppid.STRING_EMPTY || ppid === Ppid.BINARY_EMPTY;
}
/** Text payloads: 51 string, 54 string partial, 56 empty string. */
export function isStringPpid(ppid: number): boolean {
  return ppid === Ppid.STRING || ppid === Ppid.STRING_PARTIAL || ppid === Ppid.STRING_EMPTY;
}
/** Legacy partial PPIDs (RFC 8831 §8, deprecated). */
export function isPartialPpid(ppid: number): boolean {
  return ppid === Ppid.BINARY_PARTIAL || ppid === Ppid.STRING_PARTIAL;
}

export const CHANNEL_TYPE_UNORDERED_BIT = 0x80; // RFC 8832 §5.1

export type Reliability = 'reliable' | 'rexmit' | 'timed' | 'unknown';

export interface DcepOpen {
  type: 'open';
  channelType: number;
  /** RFC 8832 §5.1: unordered when bit 0x80 of the channel type is set. */
  ordered: boolean;
  reliability: Reliability;
  priority: number;
  /** Max retransmissions (rexmit) or lifetime in ms (timed); 0/ignored for reliable. */
  reliabilityParameter: number;
  label: string;
  protocol: string;
}

export interface DcepAck {
  type: 'ack';
}

export type DcepMessage = DcepOpen | DcepAck;

/** RFC 8832 §5.1: low 7 bits select the reliability; 0x80 selects unordered delivery. */
export function reliabilityOf(channelType: number): Reliability {
  switch (channelType & 0x7f) {
    case 0x00:
      return 'reliable';
    case 0x01:
      return 'rexmit';
    case 0x02:
      return 'timed';
    default:
      return 'unknown';
  }
}

/** Max label/protocol length: the 16-bit length fields (RFC 8832 §5.1). */
const MAX_STR = 0xffff;

/**
 * Decodes a DCEP message. RFC 8832 §5.1 DATA_CHANNEL_OPEN:
 *   Message Type(1)=0x03 Channel Type(1) Priority(2) Reliability Parameter(4)
 *   Label Length(2) Protocol Length(2) Label Protocol
 * RFC 8832 §5.2 DATA_CHANNEL_ACK: Message Type(1)=0x02.
 * Returns null for unknown types or truncated messages. Label and protocol are UTF-8
 * (invalid sequences become U+FFFD).
 */
export function decodeDcep(msg: Buffer): DcepMessage | null {
  if (msg.length < 1) return null;
  const t = msg[0];
  if (t === DcepMessageType.ACK) return { type: 'ack' };
  if (t !== DcepMessageType.OPEN || msg.length < 12) return null;
  const channelType = msg[1]!;
  const labelLen = msg.readUInt16BE(8);
  const protoLen = msg.readUInt16BE(10);
  if (12 + labelLen + protoLen > msg.length) return null;
  return {
    type: 'open',
    channelType,
    ordered: (channelType & CHANNEL_TYPE_UNORDERED_BIT) === 0,
    reliability: reliabilityOf(channelType),
    priority: msg.readUInt16BE(2),
    reliabilityParameter: msg.readUInt32BE(4),
    label: msg.toString('utf8', 12, 12 + labelLen),
    protocol: msg.toString('utf8', 12 + labelLen, 12 + labelLen + protoLen),
  };
}

/** Encodes DATA_CHANNEL_OPEN (RFC 8832 §5.1). Throws RangeError on over-long strings. */
export function encodeDcepOpen(o: {
  channelType?: number;
  priority?: number;
  reliabilityParameter?: number;
  label: string;
  protocol?: string;
}): Buffer {
  const label = Buffer.from(o.label, 'utf8');
  const protocol = Buffer.from(o.protocol ?? '', 'utf8');
  if (label.length > MAX_STR || protocol.length > MAX_STR) throw new RangeError('DCEP label/protocol too long');
  const out = Buffer.alloc(12 + label.length + protocol.length);
  out[0] = DcepMessageType.OPEN;
  out[1] = (o.channelType ?? ChannelType.RELIABLE) & 0xff;
  out.writeUInt16BE((o.priority ?? 256) & 0xffff, 2);
  out.writeUInt32BE((o.reliabilityParameter ?? 0) >>> 0, 4);
  out.writeUInt16BE(label.length, 8);
  out.writeUInt16BE(protocol.length, 10);
  label.copy(out, 12);
  protocol.copy(out, 12 + label.length);
  return out;
}

/** Encodes DATA_CHANNEL_ACK (RFC 8832 §5.2). */
export function encodeDcepAck(): Buffer {
  return Buffer.from([DcepMessageType.ACK]);
}
