import t from 'tap';
import { randomBytes } from 'node:crypto';
import { MediaTracker, codecSignature, type MediaKeys } from '../../../src/inspect/media.js';
import type { InspectEvent } from '../../../src/inspect/events.js';
import { SrtpContext, SRTP_AES128_CM_HMAC_SHA1_80, SRTP_AEAD_AES_128_GCM } from '../../../src/wire/srtp.js';
import { serializeRtp } from '../../../src/wire/rtp.js';
import { assertNoSecrets, Secrets } from '../../e2e/helpers/secrets.js';

function setup(profile = SRTP_AEAD_AES_128_GCM, opts: Partial<ConstructorParameters<typeof MediaTracker>[0]> = {}) {
  const gcm = profile === SRTP_AEAD_AES_128_GCM;
  const keys: MediaKeys = {
    profile,
    clientMasterKey: randomBytes(16),
    clientMasterSalt: randomBytes(gcm ? 12 : 14),
    serverMasterKey: randomBytes(16),
    serverMasterSalt: randomBytes(gcm ? 12 : 14),
  };
  const events: InspectEvent[] = [];
  const m = new MediaTracker({ emit: (e) => events.push(e), association: 'aa'.repeat(32), ...opts });
  const client = new SrtpContext(profile, keys.clientMasterKey, keys.clientMasterSalt);
  const server = new SrtpContext(profile, keys.serverMasterKey, keys.serverMasterSalt);
  return { keys, events, m, client, server };
}

const opusPayload = (i: number) => Buffer.concat([Buffer.from([0x78]), Buffer.alloc(60 + (i % 5), i)]);
const pkt = (seq: number, ts: number, ssrc: number, pt: number, payload: Buffer, marker = false) =>
  serializeRtp({ payloadType: pt, sequenceNumber: seq, timestamp: ts, ssrc, marker, payload });

t.test('decrypts both directions and emits stream/packet/verified events', async (t) => {
  const { keys, events, m, client, server } = setup();
  t.equal(m.handle(client.protectRtp(pkt(1, 0, 0x1111, 111, opusPayload(0))), 'c2s', 1000), 'no-keys');
  t.equal(events.length, 0, 'no events without keys');
  t.ok(m.setKeys(keys));
  for (let i = 0; i < 6; i++)
    t.equal(m.handle(client.protectRtp(pkt(2 + i, 960 * (i + 1), 0x1111, 111, opusPayload(i + 1))), 'c2s', 1000 + 20 * i), 'rtp');
  // VP8 keyframe from the server: descriptor 0x90 (X,S), 0x80 (I), picture id, then frame tag + start code.
  const vp8 = Buffer.from([0x90, 0x80, 0x05, 0x50, 0x2a, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01, 0, 0, 0]);
  t.equal(m.handle(server.protectRtp(pkt(500, 9000, 0x2222, 96, vp8, true)), 's2c', 1100), 'rtp');
  const verified = events.filter((e) => e.type === 'keys.verified');
  t.same(
    verified.map((e) => e.dir),
    ['c2s', 's2c'],
  );
  const streams = events.filter((e) => e.type === 'rtp.stream');
  t.same(
    streams.map((e) => e.type === 'rtp.stream' && [e.dir, e.ssrc, e.codec, e.kind]),
    [
      ['c2s', 0x1111, 'opus', 'audio'],
      ['s2c', 0x2222, 'vp8', 'video'],
    ],
  );
  const packets = events.filter((e) => e.type === 'rtp.packet');
  t.equal(packets.length, 7);
  const last = packets[6];
  t.ok(last.type === 'rtp.packet' && last.payload.equals(vp8) && last.marker && last.seq === 500 && last.index === 500);
  const first = packets[0];
  t.ok(first.type === 'rtp.packet' && first.payload.equals(opusPayload(1)) && first.association === 'aa'.repeat(32));
  // No event carries key material.
  const json = JSON.stringify(events, (k, v) => (k === 'payload' ? undefined : v));
  const secrets = new Secrets()
    .add('srtp_client_master_key', 'media keys', keys.clientMasterKey)
    .add('srtp_server_master_key', 'media keys', keys.serverMasterKey)
    .add('srtp_client_master_salt', 'media keys', keys.clientMasterSalt)
    .add('srtp_server_master_salt', 'media keys', keys.serverMasterSalt);
  assertNoSecrets(t, secrets, { texts: { 'events (without payloads)': json } }, 'no key material in events');
});

t.test('RTCP is told apart (RFC 5761) and decrypted', async (t) => {
  const { keys, events, m, client } = setup(SRTP_AES128_CM_HMAC_SHA1_80);
  m.setKeys(keys);
  const rr = Buffer.from('81c90007000011110000222200000000000000000000000000000000', 'hex');
  t.equal(m.handle(client.protectRtcp(rr), 'c2s', 5), 'rtcp');
  const e = events.find((x) => x.type === 'rtp.packet');
  t.ok(e && e.type === 'rtp.packet' && e.rtcp === true && e.payloadType === 201 && e.payload.equals(rr));
  t.equal(m.stats.rtcp, 1);
});

t.test('wrong keys: keys.invalid once, undecryptable rate-limited with counts', async (t) => {
  const { keys, events, m, server } = setup(SRTP_AEAD_AES_128_GCM, { undecryptableIntervalMs: 1000 });
  m.setKeys(keys);
  // Server-keyed packets arriving as c2s do not authenticate with the client keys.
  for (let i = 0; i < 50; i++)
    t.equal(m.handle(server.protectRtp(pkt(i, i, 7, 111, opusPayload(i))), 'c2s', 10_000 + i * 10), 'undecryptable');
  t.equal(events.filter((e) => e.type === 'keys.invalid').length, 1);
  let und = events.filter((e) => e.type === 'undecryptable');
  t.equal(und.length, 1, 'first failure reported at once, the rest held back');
  m.handle(server.protectRtp(pkt(60, 60, 7, 111, opusPayload(1))), 'c2s', 11_000);
  und = events.filter((e) => e.type === 'undecryptable');
  t.equal(und.length, 2);
  t.ok(und[1].type === 'undecryptable' && und[1].count === 50 && und[1].what === 'srtp' && und[1].reason === 'authentication failed');
  t.equal(m.stats.undecryptable, 51);
  t.equal(events.filter((e) => e.type === 'rtp.packet').length, 0, 'nothing unauthenticated is emitted');
});

t.test('payload type map from SDP overrides guessing; static PTs', async (t) => {
  const { keys, events, m, client } = setup();
  m.setKeys(keys);
  m.setPayloadTypeMap({ 100: 'H264/90000', 101: 'opus/48000/2' });
  m.handle(client.protectRtp(pkt(1, 1, 1, 100, Buffer.from([1, 2, 3]))), 'c2s', 1);
  m.handle(client.protectRtp(pkt(1, 1, 2, 0, Buffer.alloc(160, 0xff))), 'c2s', 1);
  const s = events.filter((e) => e.type === 'rtp.stream').map((e) => e.type === 'rtp.stream' && [e.ssrc, e.codec, e.kind]);
  t.same(s, [
    [1, 'h264', 'video'],
    [2, 'pcmu', 'audio'],
  ]);
});

t.test('bad key sets are refused with keys.invalid', async (t) => {
  const events: InspectEvent[] = [];
  const m = new MediaTracker({ emit: (e) => events.push(e) });
  t.equal(
    m.setKeys({
      profile: 1,
      clientMasterKey: Buffer.alloc(16),
      clientMasterSalt: Buffer.alloc(12),
      serverMasterKey: Buffer.alloc(16),
      serverMasterSalt: Buffer.alloc(14),
    }),
    false,
  );
  t.equal(
    m.setKeys({
      profile: 0x99,
      clientMasterKey: Buffer.alloc(16),
      clientMasterSalt: Buffer.alloc(14),
      serverMasterKey: Buffer.alloc(16),
      serverMasterSalt: Buffer.alloc(14),
    }),
    false,
  );
  t.equal(events.filter((e) => e.type === 'keys.invalid').length, 2);
  t.equal(m.hasKeys, false);
  t.equal(m.handle(Buffer.from('80000001000000000000000100', 'hex'), 'c2s', 0), 'no-keys');
  t.equal(m.handle(Buffer.from('16fefd', 'hex'), 'c2s', 0), 'not-media');
});

t.test('state stays bounded under many SSRCs', async (t) => {
  const { keys, m, client } = setup(SRTP_AEAD_AES_128_GCM, { maxSsrcs: 16 });
  m.setKeys(keys);
  for (let s = 0; s < 500; s++) m.handle(client.protectRtp(pkt(1, 1, s + 1, 96, Buffer.alloc(10))), 'c2s', 1);
  t.ok(m.trackedStreams <= 32);
});

t.test('codec signatures', async (t) => {
  t.equal(codecSignature(Buffer.from([0x10, 0x50, 0x2a, 0x00, 0x9d, 0x01, 0x2a, 0x80])), 'vp8', 'VP8 keyframe, short descriptor');
  t.equal(codecSignature(Buffer.from([0x10, 0x51, 0x2a, 0x00, 0x9d, 0x01, 0x2a, 0x80])), null, 'VP8 interframe has no signature');
  t.equal(codecSignature(Buffer.from([0x67, 0x42, 0xc0, 0x1f, 0xda])), 'h264', 'SPS');
  t.equal(codecSignature(Buffer.from([0x78, 0x00, 0x0a, 0x67, 0x42, 0xc0, 0x1f, 0, 0, 0, 0, 0, 0])), 'h264', 'STAP-A with SPS');
  t.equal(codecSignature(Buffer.from([0x7c, 0x85, 0x88, 0x80])), 'h264', 'FU-A start of IDR');
  t.equal(codecSignature(Buffer.from([0x18, 0x08, 0x00, 0x00, 0x00])), 'av1', 'AV1 new sequence with sequence header OBU');
  t.equal(codecSignature(Buffer.from([0x8a, 0x01, 0x18, 0x02, 0x80, 0x01, 0x68, 0x00])), 'vp9', 'VP9 keyframe with SS');
});
