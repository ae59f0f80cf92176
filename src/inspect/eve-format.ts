/**
 * InspectEvent → EVE JSON (contract.md "Events"; Suricata eve.json shape).
 *
 * Every field is copied explicitly from a whitelist: decrypted content (`data`,
 * `payload`) is summarised by size and SHA-256 only, and nothing here can reach key
 * material because InspectEvents do not carry any (events.ts) and unknown fields are
 * never copied.
 */
import { eveTimestamp, type EveEvent } from '../events/eve.js';
import type { AppDataEvent, Direction, InspectEvent } from './events.js';
import type { Endpoint } from './turn-unwrap.js';

export interface FlowMeta {
  /** Numeric flow id, stable for the flow's lifetime (Suricata's flow_id). */
  flowId: number;
  proto: 'UDP' | 'TCP';
  /** Side A: the first sender seen on the flow; side B the other. */
  a: Endpoint;
  b: Endpoint;
  /**
   * Whether side A is the DTLS client (sent the ClientHello). Undefined until known;
   * then event directions are taken as relative to A.
   */
  dtlsClientIsA?: boolean;
  /** For traffic unwrapped from a TURN client leg (turn-unwrap.ts). */
  turn?: {
    transport: 'udp' | 'tcp';
    client: Endpoint;
    server: Endpoint;
    relayed?: Endpoint;
  };
}

function endpoints(f: FlowMeta, dir: Direction | undefined): [Endpoint, Endpoint] {
  const clientIsA = f.dtlsClientIsA ?? true;
  const fromA = (dir ?? 'c2s') === 'c2s' ? clientIsA : !clientIsA;
  return fromA ? [f.a, f.b] : [f.b, f.a];
}

function ep(e: Endpoint): string {
  return e.ip.includes(':') ? `[${e.ip}]:${e.port}` : `${e.ip}:${e.port}`;
}

/** The common EVE header of an event on a flow. */
export function eveBase(
  eventType: string,
  time: number,
  f: FlowMeta,
  dir: Direction | undefined,
  association: string | undefined,
): EveEvent {
  const [src, dst] = endpoints(f, dir);
  const gh: Record<string, unknown> = {};
  if (association) gh.association = association;
  if (dir) gh.direction = dir;
  if (f.turn) {
    gh.leg = 'turn';
    gh.turn_transport = f.turn.transport;
    gh.turn_server = ep(f.turn.server);
    if (f.turn.relayed) gh.relayed = ep(f.turn.relayed);
  }
  return {
    timestamp: eveTimestamp(time),
    event_type: eventType,
    flow_id: f.flowId,
    src_ip: src.ip,
    src_port: src.port,
    dest_ip: dst.ip,
    dest_port: dst.port,
    proto: f.proto,
    gatehouse: gh,
  };
}

/** Converts one inspection event. Raw bytes are never included. */
export function toEve(e: InspectEvent, f: FlowMeta): EveEvent {
  const o = eveBase(e.type, e.time, f, e.dir, e.association);
  switch (e.type) {
    case 'dtls.handshake':
      o.dtls = {
        version: e.version,
        client_random: e.clientRandom,
        server_random: e.serverRandom,
        cipher_suite: e.cipherSuite,
        ...(e.srtpProfile !== undefined ? { srtp_profile: e.srtpProfile } : {}),
        ...(e.encryptThenMac !== undefined ? { encrypt_then_mac: e.encryptThenMac } : {}),
        ...(e.extendedMasterSecret !== undefined ? { extended_master_secret: e.extendedMasterSecret } : {}),
      };
      break;
    case 'dtls.renegotiation':
      o.dtls = { renegotiation: e.how };
      break;
    case 'keys.verified':
      o.keys = { what: e.what };
      break;
    case 'keys.invalid':
      o.keys = { what: e.what, reason: e.reason };
      break;
    case 'datachannel.open':
      o.datachannel = { stream: e.stream, label: e.label, protocol: e.protocol, channel_type: e.channelType, ordered: e.ordered };
      break;
    case 'datachannel.message':
      o.datachannel = {
        stream: e.stream,
        label: e.label,
        ppid: e.ppid,
        size: e.size,
        sha256: e.sha256,
        ...(e.index !== undefined ? { index: e.index } : {}),
      };
      break;
    case 'file':
      o.file = {
        stream: e.stream,
        label: e.label,
        size: e.size,
        sha256: e.sha256,
        file_type: e.fileType,
        ...(e.index !== undefined ? { index: e.index } : {}),
        ...(e.name !== undefined ? { name: e.name } : {}),
        ...(e.transfer
          ? {
              transfer: {
                first_message: e.transfer.firstMessage,
                last_message: e.transfer.lastMessage,
                messages: e.transfer.messages,
                end: e.transfer.end,
                ...(e.transfer.announcedSize !== undefined ? { announced_size: e.transfer.announcedSize } : {}),
              },
            }
          : {}),
        ...(e.overLimit ? { over_limit: true } : {}),
      };
      break;
    case 'appdata':
      o.appdata = e.sha256 !== undefined ? { size: e.size, sha256: e.sha256 } : { size: e.size };
      break;
    case 'rtp.stream':
      o.rtp = { ssrc: e.ssrc, payload_type: e.payloadType, codec: e.codec, kind: e.kind };
      break;
    case 'rtp.packet':
      o.rtp = {
        ssrc: e.ssrc,
        payload_type: e.payloadType,
        seq: e.seq,
        index: e.index,
        timestamp: e.timestamp,
        marker: e.marker,
        payload_size: e.payloadSize,
        ...(e.rtcp ? { rtcp: true } : {}),
      };
      break;
    case 'undecryptable':
      o.undecryptable = { what: e.what, reason: e.reason, count: e.count };
      break;
    case 'cap.hit':
      o.cap = { what: e.what, limit: e.limit };
      break;
    default:
      // A type added to events.ts later: header only, never its fields.
      break;
  }
  return o;
}

/** The header of a flow's `appdata` lines in one direction, without its timestamp (eveLine). */
interface LineHead {
  association: string | undefined;
  clientIsA: boolean | undefined;
  relayed: Endpoint | undefined;
  text: string;
  /** text as UTF-8 (encodeEveLine), made on first use. */
  bytes: Buffer | null;
}
const lineHeads = new WeakMap<FlowMeta, { c2s?: LineHead; s2c?: LineHead; none?: LineHead }>();

/** Years 0..9999: eveTimestamp's form has a fixed length ("YYYY-MM-DDTHH:MM:SS.mmm"). */
const LAST_FOUR_DIGIT_YEAR_MS = 253_402_300_800_000;
/**
 * The date part ("2026-11-22T10:00:00.") of the last few seconds of packet time, as text
 * and as bytes, direct mapped by second: a capture's flows interleave a handful of seconds.
 */
const STAMP_SLOTS = 64;
const stampSeconds = new Float64Array(STAMP_SLOTS).fill(NaN);
const stampTexts: string[] = new Array<string>(STAMP_SLOTS).fill('');
const stampBytes = Array.from({ length: STAMP_SLOTS }, () => Buffer.alloc(20));

/** The slot holding second `sec`'s date part (sec >= 0), filled on first use. */
function stampSlot(sec: number): number {
  const slot = sec % STAMP_SLOTS;
  if (stampSeconds[slot] !== sec) {
    stampSeconds[slot] = sec;
    const text = eveTimestamp(sec * 1000).slice(0, 20);
    stampTexts[slot] = text;
    stampBytes[slot]!.write(text, 0, 'latin1');
  }
  return slot;
}

/** eveTimestamp(ms), the date part built once per second of packet time. */
function lineTimestamp(ms: number): string {
  const whole = Math.floor(ms); // Date truncates fractions; for ms >= 0 that is floor
  if (!(whole >= 0 && whole < LAST_FOUR_DIGIT_YEAR_MS)) return eveTimestamp(ms);
  const sec = Math.floor(whole / 1000);
  const m = whole - sec * 1000;
  return `${stampTexts[stampSlot(sec)]}${m < 10 ? '00' : m < 100 ? '0' : ''}${m}000+0000`;
}

/**
 * One event as its JSON line: exactly JSON.stringify(toEve(e, f)). `appdata` events, which
 * are most lines of a capture of application data, reuse their flow's header text
 * (rebuilt when the direction, association, DTLS roles or relayed address change) instead
 * of building and serialising an object per record.
 */
export function eveLine(e: InspectEvent, f: FlowMeta): string {
  if (e.type !== 'appdata') return JSON.stringify(toEve(e, f));
  const h = lineHead(e, f);
  const hash = e.sha256 !== undefined ? `,"sha256":${JSON.stringify(e.sha256)}` : '';
  return `{"timestamp":"${lineTimestamp(e.time)}"${h.text},"appdata":{"size":${e.size}${hash}}}`;
}

/** The flow's cached header for appdata lines in e's direction (rebuilt when it changed). */
function lineHead(e: AppDataEvent, f: FlowMeta): LineHead {
  let heads = lineHeads.get(f);
  if (!heads) {
    heads = {};
    lineHeads.set(f, heads);
  }
  const slot = e.dir ?? 'none';
  let h = heads[slot];
  const relayed = f.turn?.relayed;
  if (!h || h.association !== e.association || h.clientIsA !== f.dtlsClientIsA || h.relayed !== relayed) {
    const json = JSON.stringify(eveBase('appdata', 0, f, e.dir, e.association));
    // {"timestamp":"...","event_type":"appdata",...,"gatehouse":{...}}: keep from the
    // comma before event_type, drop the closing brace.
    h = {
      association: e.association,
      clientIsA: f.dtlsClientIsA,
      relayed,
      text: json.slice(json.indexOf(',"event_type"'), -1),
      bytes: null,
    };
    heads[slot] = h;
  }
  return h;
}

const STAMP_OPEN = Buffer.from('{"timestamp":"', 'latin1');
const STAMP_CLOSE = Buffer.from('000+0000"', 'latin1');
const SIZE_OPEN = Buffer.from(',"appdata":{"size":', 'latin1');
const HASH_OPEN = Buffer.from(',"sha256":"', 'latin1');
/**
 * Bytes an appdata line may need beyond its header: STAMP_OPEN (14), the date and the
 * milliseconds (23), STAMP_CLOSE (9), SIZE_OPEN (19), up to 16 size digits, HASH_OPEN (11),
 * 64 hash digits, its closing quote and the two braces, and one byte left for the newline.
 */
const APPDATA_LINE_EXTRA = 14 + 23 + 9 + 19 + 16 + 11 + 64 + 4;

/** Writes the decimal digits of a non-negative integer below 2^53 at off; returns the new offset. */
function writeDigits(out: Buffer, off: number, n: number): number {
  let len = 1;
  for (let x = n; x >= 10; x = Math.floor(x / 10)) len++;
  for (let i = off + len - 1, x = n; i >= off; i--, x = Math.floor(x / 10)) out[i] = 48 + (x % 10);
  return off + len;
}

/**
 * eveLine(e, f) as UTF-8 bytes written into out at off, for the lines that are most of a
 * capture's (`appdata`), without building the line as a string; returns the offset after
 * it (one byte at least is left after it, for a newline), -2 when the line may not fit in
 * out after off, or -1 when this path does not write e (another type, or values outside
 * the fixed forms: the caller writes eveLine(e, f)). The same bytes as
 * Buffer.from(eveLine(e, f)) (test/unit/inspect/inspect-fast).
 */
export function encodeEveLine(e: InspectEvent, f: FlowMeta, out: Buffer, off: number): number {
  if (e.type !== 'appdata') return -1;
  const whole = Math.floor(e.time);
  // Years 0..9999 and sizes that are integers: other values take eveLine's general path.
  if (!(whole >= 0 && whole < LAST_FOUR_DIGIT_YEAR_MS) || !Number.isSafeInteger(e.size) || e.size < 0) return -1;
  if (e.sha256 !== undefined && !/^[0-9a-f]{64}$/.test(e.sha256)) return -1;
  const h = lineHead(e, f);
  const head = (h.bytes ??= Buffer.from(h.text, 'utf8'));
  if (off + head.length + APPDATA_LINE_EXTRA > out.length) return -2;
  const sec = Math.floor(whole / 1000);
  const slot = stampSlot(sec);
  const ms = whole - sec * 1000;
  out.set(STAMP_OPEN, off);
  off += STAMP_OPEN.length;
  out.set(stampBytes[slot]!, off);
  off += 20;
  out[off++] = 48 + Math.floor(ms / 100);
  out[off++] = 48 + (Math.floor(ms / 10) % 10);
  out[off++] = 48 + (ms % 10);
  out.set(STAMP_CLOSE, off);
  off += STAMP_CLOSE.length;
  out.set(head, off);
  off += head.length;
  out.set(SIZE_OPEN, off);
  off = writeDigits(out, SIZE_OPEN.length + off, e.size);
  if (e.sha256 !== undefined) {
    out.set(HASH_OPEN, off);
    off += HASH_OPEN.length;
    off += out.write(e.sha256, off, 'latin1');
    out[off++] = 0x22; // "
  }
  out[off++] = 0x7d; // }
  out[off++] = 0x7d;
  return off;
}

/** An `alert` event (contract.md) for a rule match on a flow. */
export function alertEve(
  time: number,
  f: FlowMeta,
  dir: Direction | undefined,
  association: string | undefined,
  alert: { action: string; signature_id: string; signature: string; severity: number },
  extra: Record<string, unknown> = {},
): EveEvent {
  const o = eveBase('alert', time, f, dir, association);
  o.alert = alert;
  Object.assign(o.gatehouse as Record<string, unknown>, extra);
  return o;
}
