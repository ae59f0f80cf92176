/**
 * Key sets (key-escrow.md §3): the secrets of one DTLS association at one epoch.
 *
 * Public API:
 *   interface KeySet                      — camelCase fields of key-escrow.md §3
 *   class KeySetError (code E_KEYSET, .reason)
 *   encodeKeySet(ks): Buffer              — TLV form (type u8, length u16 BE, value)
 *   decodeKeySet(buf): KeySet             — throws KeySetError; unknown TLV types skipped
 *   validateKeySet(ks): void              — throws KeySetError (missing / bad lengths / unsupported)
 *   keySetFromJson(obj): KeySet           — contract.md JSON form (snake_case names, hex bytes)
 *   keySetsFromJson(text|array): KeySet[]
 *   keySetToJson(ks): Record<string, unknown>  (tests/tools only: contains secrets)
 *   wipeKeySet(ks): void                  — zero every buffer
 *   suiteInfo(id) / CIPHER_SUITES, srtpProfileInfo(id) / SRTP_PROFILES (re-exported tables)
 *   isDtls13Suite(id)
 *
 * Secrets never appear in KeySetError messages (only field names and lengths).
 */
import { CIPHER_SUITES, cipherSuiteInfo, type CipherSuiteInfo } from './dtls-crypto.js';
import { SRTP_PROFILES, srtpProfileInfo, type SrtpProfileInfo } from './tls-prf.js';

export { CIPHER_SUITES, SRTP_PROFILES, srtpProfileInfo };
export type { CipherSuiteInfo, SrtpProfileInfo };

export function suiteInfo(id: number): CipherSuiteInfo | undefined {
  return cipherSuiteInfo(id);
}

export function isDtls13Suite(id: number): boolean {
  return !!cipherSuiteInfo(id)?.tls13;
}

export interface KeySet {
  clientRandom: Buffer;
  serverRandom: Buffer;
  cipherSuite: number;
  /** The DTLS epoch these record keys protect (1 for the first DTLS 1.2 handshake, 3 for DTLS 1.3). */
  epoch: number;
  clientWriteKey?: Buffer;
  serverWriteKey?: Buffer;
  clientWriteIv?: Buffer;
  serverWriteIv?: Buffer;
  clientMacKey?: Buffer;
  serverMacKey?: Buffer;
  /** RFC 7366 negotiated (CBC suites). */
  encryptThenMac?: boolean;
  srtpProfile?: number;
  srtpClientMasterKey?: Buffer;
  srtpServerMasterKey?: Buffer;
  srtpClientMasterSalt?: Buffer;
  srtpServerMasterSalt?: Buffer;
  clientAppTrafficSecret?: Buffer;
  serverAppTrafficSecret?: Buffer;
  clientHsTrafficSecret?: Buffer;
  serverHsTrafficSecret?: Buffer;
}

/** A key set that breaks key-escrow.md §3. Code `E_KEYSET`, like GatehouseError's (wire imports nothing of ours). */
export class KeySetError extends Error {
  readonly code = 'E_KEYSET';
  readonly details: Record<string, unknown>;
  constructor(readonly reason: string) {
    super(`invalid key set: ${reason}`);
    this.name = 'KeySetError';
    this.details = { reason };
  }
}

type BufField =
  | 'clientRandom'
  | 'serverRandom'
  | 'clientWriteKey'
  | 'serverWriteKey'
  | 'clientWriteIv'
  | 'serverWriteIv'
  | 'clientMacKey'
  | 'serverMacKey'
  | 'srtpClientMasterKey'
  | 'srtpServerMasterKey'
  | 'srtpClientMasterSalt'
  | 'srtpServerMasterSalt'
  | 'clientAppTrafficSecret'
  | 'serverAppTrafficSecret'
  | 'clientHsTrafficSecret'
  | 'serverHsTrafficSecret';

type FieldKind = 'bytes' | 'u16' | 'u8bool';

interface FieldDef {
  type: number;
  field: keyof KeySet;
  json: string;
  kind: FieldKind;
}

/** key-escrow.md §3 TLV table. */
const FIELDS: FieldDef[] = [
  { type: 0x01, field: 'clientRandom', json: 'client_random', kind: 'bytes' },
  { type: 0x02, field: 'serverRandom', json: 'server_random', kind: 'bytes' },
  { type: 0x03, field: 'cipherSuite', json: 'cipher_suite', kind: 'u16' },
  { type: 0x04, field: 'clientWriteKey', json: 'client_write_key', kind: 'bytes' },
  { type: 0x05, field: 'serverWriteKey', json: 'server_write_key', kind: 'bytes' },
  { type: 0x06, field: 'clientWriteIv', json: 'client_write_iv', kind: 'bytes' },
  { type: 0x07, field: 'serverWriteIv', json: 'server_write_iv', kind: 'bytes' },
  { type: 0x08, field: 'clientMacKey', json: 'client_mac_key', kind: 'bytes' },
  { type: 0x09, field: 'serverMacKey', json: 'server_mac_key', kind: 'bytes' },
  { type: 0x0a, field: 'epoch', json: 'epoch', kind: 'u16' },
  { type: 0x0b, field: 'srtpProfile', json: 'srtp_profile', kind: 'u16' },
  { type: 0x0c, field: 'srtpClientMasterKey', json: 'srtp_client_master_key', kind: 'bytes' },
  { type: 0x0d, field: 'srtpServerMasterKey', json: 'srtp_server_master_key', kind: 'bytes' },
  { type: 0x0e, field: 'srtpClientMasterSalt', json: 'srtp_client_master_salt', kind: 'bytes' },
  { type: 0x0f, field: 'srtpServerMasterSalt', json: 'srtp_server_master_salt', kind: 'bytes' },
  { type: 0x10, field: 'encryptThenMac', json: 'encrypt_then_mac', kind: 'u8bool' },
  { type: 0x11, field: 'clientAppTrafficSecret', json: 'client_application_traffic_secret', kind: 'bytes' },
  { type: 0x12, field: 'serverAppTrafficSecret', json: 'server_application_traffic_secret', kind: 'bytes' },
  { type: 0x13, field: 'clientHsTrafficSecret', json: 'client_handshake_traffic_secret', kind: 'bytes' },
  { type: 0x14, field: 'serverHsTrafficSecret', json: 'server_handshake_traffic_secret', kind: 'bytes' },
];
const BY_TYPE = new Map(FIELDS.map((f) => [f.type, f]));
const BY_JSON = new Map(FIELDS.map((f) => [f.json, f]));

function len(ks: KeySet, f: BufField): number | undefined {
  return ks[f]?.length;
}

function need(ks: KeySet, f: BufField, name: string, lengths: number[]): void {
  const l = len(ks, f);
  if (l === undefined) throw new KeySetError(`missing ${name}`);
  if (!lengths.includes(l)) throw new KeySetError(`${name} has length ${l}, suite needs ${lengths.join(' or ')}`);
}

function forbid(ks: KeySet, f: BufField, name: string): void {
  if (ks[f] !== undefined) throw new KeySetError(`${name} is not used by the cipher suite`);
}

function optional(ks: KeySet, f: BufField, name: string, lengths: number[]): void {
  if (ks[f] !== undefined) need(ks, f, name, lengths);
}

/**
 * key-escrow.md §3 rules: required fields, suite/profile support, key lengths matching the
 * suite. Throws KeySetError.
 */
export function validateKeySet(ks: KeySet): void {
  need(ks, 'clientRandom', 'client_random', [32]);
  need(ks, 'serverRandom', 'server_random', [32]);
  if (ks.cipherSuite === undefined) throw new KeySetError('missing cipher_suite');
  if (ks.epoch === undefined) throw new KeySetError('missing epoch');
  if (!Number.isInteger(ks.epoch) || ks.epoch < 0 || ks.epoch > 0xffff) throw new KeySetError('epoch out of range');
  const suite = cipherSuiteInfo(ks.cipherSuite);
  if (!suite) throw new KeySetError(`unsupported cipher suite 0x${ks.cipherSuite.toString(16).padStart(4, '0')}`);
  const secretLen = suite.prfHash === 'sha384' ? 48 : 32;
  if (suite.tls13) {
    // key-escrow.md §3: DTLS 1.3 carries the application traffic secrets instead of write keys.
    need(ks, 'clientAppTrafficSecret', 'client_application_traffic_secret', [secretLen]);
    need(ks, 'serverAppTrafficSecret', 'server_application_traffic_secret', [secretLen]);
    optional(ks, 'clientHsTrafficSecret', 'client_handshake_traffic_secret', [secretLen]);
    optional(ks, 'serverHsTrafficSecret', 'server_handshake_traffic_secret', [secretLen]);
    optional(ks, 'clientWriteKey', 'client_write_key', [suite.keyLen]);
    optional(ks, 'serverWriteKey', 'server_write_key', [suite.keyLen]);
    optional(ks, 'clientWriteIv', 'client_write_iv', [suite.ivLen]);
    optional(ks, 'serverWriteIv', 'server_write_iv', [suite.ivLen]);
    forbid(ks, 'clientMacKey', 'client_mac_key');
    forbid(ks, 'serverMacKey', 'server_mac_key');
    if (ks.epoch < 3) throw new KeySetError('DTLS 1.3 application secrets protect epoch 3 or later');
  } else {
    need(ks, 'clientWriteKey', 'client_write_key', [suite.keyLen]);
    need(ks, 'serverWriteKey', 'server_write_key', [suite.keyLen]);
    if (suite.kind === 'cbc') {
      need(ks, 'clientMacKey', 'client_mac_key', [suite.macLen]);
      need(ks, 'serverMacKey', 'server_mac_key', [suite.macLen]);
      forbid(ks, 'clientWriteIv', 'client_write_iv');
      forbid(ks, 'serverWriteIv', 'server_write_iv');
      if (ks.encryptThenMac === undefined) throw new KeySetError('missing encrypt_then_mac');
    } else {
      need(ks, 'clientWriteIv', 'client_write_iv', [suite.ivLen]);
      need(ks, 'serverWriteIv', 'server_write_iv', [suite.ivLen]);
      forbid(ks, 'clientMacKey', 'client_mac_key');
      forbid(ks, 'serverMacKey', 'server_mac_key');
    }
    for (const f of ['clientAppTrafficSecret', 'serverAppTrafficSecret', 'clientHsTrafficSecret', 'serverHsTrafficSecret'] as const)
      forbid(ks, f, FIELDS.find((x) => x.field === f)!.json);
    if (ks.epoch < 1) throw new KeySetError('record keys protect epoch 1 or later');
  }
  // "with media": all SRTP fields together, lengths per profile (RFC 5764 §4.1.2, RFC 7714 §14.2).
  const srtpFields = ['srtpClientMasterKey', 'srtpServerMasterKey', 'srtpClientMasterSalt', 'srtpServerMasterSalt'] as const;
  if (ks.srtpProfile === undefined) {
    for (const f of srtpFields) if (ks[f] !== undefined) throw new KeySetError('SRTP keys without srtp_profile');
  } else {
    const p = srtpProfileInfo(ks.srtpProfile);
    if (!p) throw new KeySetError(`unsupported SRTP profile 0x${ks.srtpProfile.toString(16).padStart(4, '0')}`);
    need(ks, 'srtpClientMasterKey', 'srtp_client_master_key', [p.keyLen]);
    need(ks, 'srtpServerMasterKey', 'srtp_server_master_key', [p.keyLen]);
    need(ks, 'srtpClientMasterSalt', 'srtp_client_master_salt', [p.saltLen]);
    need(ks, 'srtpServerMasterSalt', 'srtp_server_master_salt', [p.saltLen]);
  }
}

/** TLV encoding of key-escrow.md §3 (fields in type order). Validates first. */
export function encodeKeySet(ks: KeySet): Buffer {
  validateKeySet(ks);
  const parts: Buffer[] = [];
  for (const f of FIELDS) {
    const v = ks[f.field];
    if (v === undefined) continue;
    let value: Buffer;
    if (f.kind === 'bytes') value = v as Buffer;
    else if (f.kind === 'u16') {
      value = Buffer.alloc(2);
      value.writeUInt16BE(v as number);
    } else value = Buffer.of(v ? 1 : 0);
    const h = Buffer.alloc(3);
    h[0] = f.type;
    h.writeUInt16BE(value.length, 1);
    parts.push(h, value);
  }
  return Buffer.concat(parts);
}

/**
 * Parses and validates a TLV key set. Throws KeySetError on a truncated TLV, a duplicate
 * TLV, a missing required TLV, a bad length or an unsupported suite or profile. Unknown
 * TLV types are skipped (key-escrow.md §3). Byte fields are copies.
 */
export function decodeKeySet(buf: Buffer): KeySet {
  const seen = new Set<number>();
  const ks: Partial<Record<keyof KeySet, unknown>> = {};
  let o = 0;
  while (o < buf.length) {
    if (o + 3 > buf.length) throw new KeySetError('truncated TLV header');
    const type = buf[o]!;
    const l = buf.readUInt16BE(o + 1);
    if (o + 3 + l > buf.length) throw new KeySetError(`truncated TLV 0x${type.toString(16)}`);
    const v = buf.subarray(o + 3, o + 3 + l);
    o += 3 + l;
    if (seen.has(type)) throw new KeySetError(`duplicate TLV 0x${type.toString(16).padStart(2, '0')}`);
    seen.add(type);
    const f = BY_TYPE.get(type);
    if (!f) continue; // unknown types are skipped
    if (f.kind === 'bytes') ks[f.field] = Buffer.from(v);
    else if (f.kind === 'u16') {
      if (l !== 2) throw new KeySetError(`${f.json} has length ${l}, needs 2`);
      ks[f.field] = v.readUInt16BE(0);
    } else {
      if (l !== 1 || v[0]! > 1) throw new KeySetError(`${f.json} must be one byte, 0 or 1`);
      ks[f.field] = v[0] === 1;
    }
  }
  const out = ks as KeySet;
  try {
    validateKeySet(out);
  } catch (e) {
    wipeKeySet(out);
    throw e;
  }
  return out;
}

/**
 * contract.md JSON form: lower-case snake_case names of key-escrow.md §3, byte values in
 * hex, numbers as numbers (booleans accepted for encrypt_then_mac). Unknown keys are
 * ignored, like unknown TLVs.
 */
export function keySetFromJson(obj: unknown): KeySet {
  if (!obj || typeof obj !== 'object' || Array.isArray(obj)) throw new KeySetError('key set must be a JSON object');
  const ks: Partial<Record<keyof KeySet, unknown>> = {};
  for (const [k, v] of Object.entries(obj as Record<string, unknown>)) {
    const f = BY_JSON.get(k);
    if (!f) continue;
    if (f.kind === 'bytes') {
      if (typeof v !== 'string' || !/^(?:[0-9a-fA-F]{2})*$/.test(v)) throw new KeySetError(`${k} must be a hex string`);
      ks[f.field] = Buffer.from(v, 'hex');
    } else if (f.kind === 'u16') {
      if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > 0xffff) throw new KeySetError(`${k} must be an integer 0..65535`);
      ks[f.field] = v;
    } else {
      if (v !== 0 && v !== 1 && v !== true && v !== false) throw new KeySetError(`${k} must be 0, 1, true or false`);
      ks[f.field] = v === 1 || v === true;
    }
  }
  const out = ks as KeySet;
  validateKeySet(out);
  return out;
}

/** A JSON key-set file: an array of key-set objects (or a single object). */
export function keySetsFromJson(input: string | unknown): KeySet[] {
  let v: unknown = input;
  if (typeof input === 'string') {
    try {
      v = JSON.parse(input);
    } catch {
      throw new KeySetError('not valid JSON');
    }
  }
  const arr = Array.isArray(v) ? v : [v];
  return arr.map((x, i) => {
    try {
      return keySetFromJson(x);
    } catch (e) {
      if (e instanceof KeySetError) throw new KeySetError(`entry ${i}: ${e.reason}`);
      throw e;
    }
  });
}

/** The JSON form (contains secrets: for tests and tools that write key files, never logs). */
export function keySetToJson(ks: KeySet): Record<string, unknown> {
  const o: Record<string, unknown> = {};
  for (const f of FIELDS) {
    const v = ks[f.field];
    if (v === undefined) continue;
    o[f.json] = Buffer.isBuffer(v) ? v.toString('hex') : f.kind === 'u8bool' ? (v ? 1 : 0) : v;
  }
  return o;
}

/** Overwrites every key buffer of the set with zeros (key-escrow.md §5.5: keys live only as long as needed). */
export function wipeKeySet(ks: KeySet): void {
  for (const f of FIELDS) {
    const v = ks[f.field];
    if (Buffer.isBuffer(v)) v.fill(0);
  }
}

/** Association name used in events: client_random in lower-case hex (key-escrow.md §1). */
export function associationId(clientRandom: Buffer): string {
  return clientRandom.toString('hex');
}
