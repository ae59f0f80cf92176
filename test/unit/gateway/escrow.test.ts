import t from 'tap';
import { createHash, randomBytes, X509Certificate } from 'node:crypto';
import { Attr, Class, Method, getAttr, getAttrs, getErrorCode, hasAttr, verifyIntegrity } from '../../../src/wire/stun.js';
import {
  ATTR_KEY_DECLINE,
  ATTR_KEY_REQUEST,
  ATTR_KEY_STATUS,
  KR_FLAG_DATA,
  KR_FLAG_MEDIA,
  KR_FLAG_REQUIRED,
  decodeKeyRequest,
  decodeKeyStatus,
  ATTR_WRITE_KEYS,
  sealWriteKeys,
  turnWriteKeysKey,
  verifyKeyRequest,
} from '../../../src/wire/escrow.js';
import { errCode } from '../turn/helpers.js';
import { encodeKeySet } from '../../../src/wire/keyset.js';
import { bindAttrs, both, escrowRig, writeKeys } from './escrow-helpers.js';
import { fixtureFlow } from './flow-guard-helpers.js';
import { assertNoSecrets, Secrets } from '../../e2e/helpers/secrets.js';

const peerAttr = (port: number) => (w: import('../../../src/wire/stun.js').StunWriter) =>
  void w.xorAddress(Attr.XorPeerAddress, '127.0.0.1', port);

t.test('KEY-REQUEST in CreatePermission and ChannelBind success, signed over the transaction ID', async (t) => {
  const rig = await escrowRig();
  t.teardown(rig.close);
  const pub = new X509Certificate(rig.identity.certificatePem).publicKey;
  for (const [method, build] of [
    [Method.CreatePermission, peerAttr(rig.peer.port)],
    [Method.ChannelBind, bindAttrs(0x4001, rig.peer.port)],
  ] as const) {
    const r = await rig.c.authed(method, build);
    t.equal(r.cls, Class.Success);
    const kr = decodeKeyRequest(getAttr(r, ATTR_KEY_REQUEST)!);
    t.ok(kr, 'KEY-REQUEST present');
    t.equal(kr!.deadline, 10);
    t.equal(kr!.flags, KR_FLAG_MEDIA | KR_FLAG_DATA | KR_FLAG_REQUIRED);
    t.same(kr!.fingerprint, createHash('sha256').update(rig.identity.certificateDer).digest());
    t.ok(verifyKeyRequest('turn', r.transactionId, kr!, pub), 'signature verifies against the gateway certificate');
    t.notOk(verifyKeyRequest('turn', randomBytes(12), kr!, pub), 'bound to the transaction ID');
    t.notOk(hasAttr(r, ATTR_KEY_STATUS), 'no KEY-STATUS without WRITE-KEYS');
    t.ok(verifyIntegrity(r, rig.c.key()), 'response integrity');
  }
  t.ok(rig.events.events.some((e) => e.event_type === 'key_request'));
});

t.test('no keys section: no KEY-REQUEST', async (t) => {
  const rig = await escrowRig('rules: []\n');
  t.teardown(rig.close);
  const r = await rig.c.authed(Method.CreatePermission, peerAttr(rig.peer.port));
  t.equal(r.cls, Class.Success);
  t.notOk(hasAttr(r, ATTR_KEY_REQUEST));
});

t.test('WRITE-KEYS: KEY-STATUS per attribute, in order; events without secrets', async (t) => {
  const f = fixtureFlow('gcm128-srtp-reneg.json');
  const rig = await escrowRig();
  t.teardown(rig.close);
  const tid = randomBytes(12);
  const r = await rig.c.authed(Method.CreatePermission, both(peerAttr(rig.peer.port), writeKeys(rig.c, tid, f.keySets)), { tid });
  t.equal(r.cls, Class.Success);
  const st = getAttrs(r, ATTR_KEY_STATUS).map((v) => decodeKeyStatus(v));
  t.same(st, [0, 0], 'two WRITE-KEYS, two KEY-STATUS "received"');
  const rec = rig.events.events.filter((e) => e.event_type === 'keys_received');
  t.equal(rec.length, 2);
  t.same(
    rec.map((e) => (e.gatehouse as Record<string, unknown>).association),
    f.keySets.map((k) => k.clientRandom.toString('hex')),
  );
  t.equal((rec[0]!.gatehouse as Record<string, unknown>).user, 'alice');
  const secrets = new Secrets()
    .keySets(f.keySets)
    .turnPassword(rig.c.username, rig.c.password, rig.c.realm, { word: true })
    .gatewayKey(rig.identity.privateKey);
  assertNoSecrets(t, secrets, { texts: { events: JSON.stringify(rig.events.events) } }, 'no key material in events');
});

t.test('invalid WRITE-KEYS: 400 "Invalid WRITE-KEYS", with integrity, nothing takes effect', async (t) => {
  const f = fixtureFlow('chacha20.json');
  const rig = await escrowRig();
  t.teardown(rig.close);
  const cases: [string, (tid: Buffer) => (w: import('../../../src/wire/stun.js').StunWriter) => void][] = [
    ['bad ver', (tid) => writeKeys(rig.c, tid, f.keySets, (v) => ((v[0] = 2), v))],
    ['second byte not 0', (tid) => writeKeys(rig.c, tid, f.keySets, (v) => ((v[1] = 1), v))],
    ['bad tag', (tid) => writeKeys(rig.c, tid, f.keySets, (v) => ((v[v.length - 1]! ^= 1), v))],
    ['key from another nonce', (tid) => writeKeys(rig.c, tid, f.keySets, undefined, 'not-the-nonce')],
    ['AAD of another transaction', () => writeKeys(rig.c, randomBytes(12), f.keySets)],
    ['truncated', (tid) => writeKeys(rig.c, tid, f.keySets, (v) => v.subarray(0, 20))],
  ];
  for (const [name, mk] of cases) {
    const tid = randomBytes(12);
    const r = await rig.c.authed(Method.CreatePermission, both(peerAttr(rig.peer.port), mk(tid)), { tid });
    t.equal(errCode(r), 400, name);
    t.equal(getErrorCode(r)?.reason, 'Invalid WRITE-KEYS', `${name}: reason phrase`);
    t.ok(verifyIntegrity(r, rig.c.key()), `${name}: 400 carries MESSAGE-INTEGRITY`);
    t.equal(rig.h.server.flows().length, 0, `${name}: no permission installed`);
  }
  // A key set that does not parse / validate (sealed correctly).
  // A correctly sealed key set whose plaintext is invalid: a TLV twice (§3), bad key length.
  for (const [name, extra] of [
    ['duplicate CIPHER_SUITE', Buffer.from([0x03, 0x00, 0x02, 0xcc, 0xa9])],
    ['second CLIENT_WRITE_KEY', Buffer.from([0x04, 0x00, 0x07, 1, 2, 3, 4, 5, 6, 7])],
  ] as const) {
    const tid = randomBytes(12);
    const sealed = (w: import('../../../src/wire/stun.js').StunWriter) => {
      const key = turnWriteKeysKey(rig.c.key('md5'), Buffer.from(rig.c.nonce!, 'utf8'));
      const aad = Buffer.concat([Buffer.from([0x21, 0x12, 0xa4, 0x42]), tid]);
      w.attr(ATTR_WRITE_KEYS, sealWriteKeys(key, aad, Buffer.concat([encodeKeySet(f.keySets[0]!), extra])));
    };
    const r = await rig.c.authed(Method.CreatePermission, both(peerAttr(rig.peer.port), sealed), { tid });
    t.equal(getErrorCode(r)?.reason, 'Invalid WRITE-KEYS', name);
  }
  t.equal(rig.h.server.flows().length, 0);
  t.equal(rig.events.events.filter((e) => e.event_type === 'keys_received').length, 0, 'nothing of the request took effect');
  t.ok(rig.events.events.filter((e) => e.event_type === 'keys_invalid').length >= cases.length);
});

t.test('KEY-DECLINE: flow_blocked keys_declined, 403 on re-create until block_for passes', async (t) => {
  const rig = await escrowRig();
  t.teardown(rig.close);
  const long = await rig.c.authed(
    Method.CreatePermission,
    both(peerAttr(rig.peer.port), (w) => void w.attr(ATTR_KEY_DECLINE, Buffer.alloc(129, 0x61))),
  );
  t.equal(errCode(long), 400, 'reason longer than 128 bytes');
  t.equal(rig.h.server.flows().length, 0);
  const r = await rig.c.authed(
    Method.CreatePermission,
    both(peerAttr(rig.peer.port), (w) => void w.attr(ATTR_KEY_DECLINE, 'no thanks')),
  );
  t.equal(r.cls, Class.Success);
  const blocked = rig.events.events.filter((e) => e.event_type === 'flow_blocked');
  t.equal(blocked.length, 1);
  t.equal((blocked[0]!.gatehouse as Record<string, unknown>).reason, 'keys_declined');
  t.ok(rig.events.events.some((e) => e.event_type === 'keys_declined'));
  t.equal(rig.h.server.flows().length, 0, 'permission removed');
  t.equal(errCode(await rig.c.authed(Method.CreatePermission, peerAttr(rig.peer.port))), 403, 'refused while blocked');
  t.equal(errCode(await rig.c.authed(Method.ChannelBind, bindAttrs(0x4001, rig.peer.port))), 403, 'ChannelBind refused too');
  rig.clock.advance(300_000);
  t.equal((await rig.c.authed(Method.CreatePermission, peerAttr(rig.peer.port))).cls, Class.Success, 'allowed after block_for');
});
