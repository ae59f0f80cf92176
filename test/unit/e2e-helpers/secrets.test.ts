// The proof helpers can fail: test/e2e/helpers/secrets.ts finds a planted secret in a
// fake data dir in every encoding, and test/e2e/helpers/require-peer.ts fails in CI when
// a peer is missing.
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { KeySet } from '../../../src/wire/keyset.js';
import { keySetToJson } from '../../../src/wire/keyset.js';
import { assertNoSecrets, describeFinding, findSecrets, Secrets } from '../../e2e/helpers/secrets.js';
import { missingPeers, peerSkip, requirePeer } from '../../e2e/helpers/require-peer.js';

function gcmKeySet(): KeySet {
  return {
    clientRandom: randomBytes(32),
    serverRandom: randomBytes(32),
    cipherSuite: 0xc02b,
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
}

function fakeDataDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'gh-secrets-'));
  mkdirSync(join(dir, 'recordings', 'r1'), { recursive: true });
  writeFileSync(join(dir, 'events.jsonl'), '{"event_type":"keys_verified","gatehouse":{"association":"00"}}\n');
  writeFileSync(join(dir, 'recordings', 'r1', 'manifest.json'), '{"files":[]}\n');
  writeFileSync(join(dir, 'state.db'), randomBytes(4096));
  return dir;
}

/** A tap-like recorder, so failing assertions of the helper are observed, not reported. */
function recorder() {
  const failed: string[] = [];
  const skipped: string[] = [];
  return {
    failed,
    skipped,
    ok: (v: unknown, msg?: string) => void (v ? 0 : failed.push(msg ?? 'ok')),
    same: (a: unknown, b: unknown, msg?: string) => void (JSON.stringify(a) === JSON.stringify(b) ? 0 : failed.push(msg ?? 'same')),
    comment: () => undefined,
    fail: (msg: string) => void failed.push(msg),
    skip: (msg: string) => void skipped.push(msg),
  };
}

t.test('every key-set field is a secret, the randoms are not', async (t) => {
  const ks = gcmKeySet();
  const s = new Secrets().keySet(ks);
  t.same(s.list.map((x) => x.kind).sort(), [
    'client_write_iv',
    'client_write_key',
    'server_write_iv',
    'server_write_key',
    'srtp_client_master_key',
    'srtp_client_master_salt',
    'srtp_server_master_key',
    'srtp_server_master_salt',
  ]);
  const d13 = new Secrets().keySet({
    clientRandom: randomBytes(32),
    serverRandom: randomBytes(32),
    cipherSuite: 0x1301,
    epoch: 3,
    clientAppTrafficSecret: randomBytes(32),
    serverAppTrafficSecret: randomBytes(32),
    clientHsTrafficSecret: randomBytes(32),
    serverHsTrafficSecret: randomBytes(32),
  });
  const kinds = new Set(d13.list.map((x) => x.kind));
  for (const k of [
    'client_application_traffic_secret',
    'server_handshake_traffic_secret',
    'dtls13_write_key',
    'dtls13_write_iv',
    'dtls13_sn_key',
  ])
    t.ok(kinds.has(k), k);
  const kl = new Secrets().keyLog(
    `# comment\nCLIENT_RANDOM ${randomBytes(32).toString('hex')} ${randomBytes(48).toString('hex')}\n` +
      `EXPORTER_SECRET ${randomBytes(32).toString('hex')} ${randomBytes(32).toString('hex')}\n`,
  );
  t.ok(
    kl.list.some((x) => x.kind === 'CLIENT_RANDOM'),
    'master secret from the key log',
  );
  t.ok(
    kl.list.some((x) => x.kind === 'srtp_client_master_key'),
    'SRTP keys derived from EXPORTER_SECRET',
  );
  t.throws(() => new Secrets().add('x', 'y', 'abc'), /too short/);
  t.throws(() => new Secrets().add('x', 'y', Buffer.alloc(16)), /all zeros/);
});

t.test('a secret planted in a fake data dir is found in every encoding, and the value is never reported', async (t) => {
  const ks = gcmKeySet();
  // A key whose base64 and base64url differ, so each encoding is told apart.
  while (!/[+/]/.test(ks.serverWriteKey!.toString('base64'))) ks.serverWriteKey = randomBytes(16);
  const secrets = new Secrets()
    .keySet(ks)
    .turnPassword('alice', 'alice-secret-pw', 'test.local')
    .adminToken('tok-' + randomBytes(8).toString('hex'));
  const key = ks.serverWriteKey!;
  const plants: Array<[string, string, Buffer | string]> = [
    ['hex', 'events.jsonl.1', `{"k":"${key.toString('hex')}"}\n`],
    ['HEX', 'log.txt', `key=${key.toString('hex').toUpperCase()}\n`],
    ['base64', 'recordings/r1/dc-0.jsonl', `{"b":"${key.toString('base64')}"}\n`],
    ['base64url', 'recordings/r1/manifest.json', `{"b":"${key.toString('base64url')}"}`],
    ['raw', 'recordings/r1/rtp-7.pcap', Buffer.concat([randomBytes(100), key, randomBytes(100)])],
    ['bytes-json', 'state.db', Buffer.from(JSON.stringify({ type: 'Buffer', data: [...key] }))],
  ];
  for (const [encoding, file, content] of plants) {
    const dir = fakeDataDir();
    t.teardown(() => rmSync(dir, { recursive: true, force: true }));
    const before = findSecrets(secrets, { dirs: { DATA_DIR: dir } });
    t.same(before.findings, [], `${encoding}: clean before planting`);
    writeFileSync(join(dir, file), content);
    const r = findSecrets(secrets, { dirs: { DATA_DIR: dir } });
    t.same(
      r.findings.map((f) => [f.kind, f.encoding, f.where]),
      [['server_write_key', encoding, `DATA_DIR/${file}`]],
      `${encoding} in ${file} found`,
    );
    const line = describeFinding(r.findings[0]!);
    t.notOk(line.includes(key.toString('hex')) || line.includes(key.toString('base64')), 'the finding does not carry the value');
    const rec = recorder();
    assertNoSecrets(rec, secrets, { dirs: { DATA_DIR: dir } }, 'planted');
    t.same(rec.failed, ['planted'], 'assertNoSecrets fails');
  }
});

t.test('a 4-byte IV: text encodings everywhere, raw bytes in text files only', async (t) => {
  const ks = gcmKeySet();
  const secrets = new Secrets().keySet(ks);
  const iv = ks.clientWriteIv!;
  const dir = fakeDataDir();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'media.ogg'), Buffer.concat([Buffer.from([0]), randomBytes(50), iv]));
  t.same(findSecrets(secrets, { dirs: { D: dir } }).findings, [], 'raw 4 bytes in a binary file: not searched');
  writeFileSync(join(dir, 'media.ogg'), Buffer.concat([randomBytes(50), Buffer.from(iv.toString('hex'))]));
  t.same(
    findSecrets(secrets, { dirs: { D: dir } }).findings.map((f) => f.encoding),
    ['hex'],
    'hex of the IV in a binary file found',
  );
  t.same(
    findSecrets(secrets, { texts: { log: Buffer.concat([Buffer.from('x '), iv]) } }).findings.map((f) => [
      f.kind,
      f.encoding,
      f.where,
      f.offset,
    ]),
    [['client_write_iv', 'raw', 'log', 2]],
    'raw IV in a text place found, with its offset',
  );
});

t.test('files that hold a secret by design: only that kind is allowed there', async (t) => {
  const token = 'tok-' + randomBytes(12).toString('base64url');
  const ks = gcmKeySet();
  const secrets = new Secrets().keySet(ks).adminToken(token).turnPassword('admin', 'bootstrap-pw-123');
  const dir = fakeDataDir();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'admin-token'), token + '\n');
  writeFileSync(join(dir, 'initial-user.json'), JSON.stringify({ name: 'admin', password: 'bootstrap-pw-123', groups: [] }));
  const r = findSecrets(secrets, { dirs: { DATA_DIR: dir } });
  t.same(r.findings, [], 'token in admin-token and password in initial-user.json are by design');
  t.same(r.allowances.map((a) => a.where).sort(), ['DATA_DIR/admin-token', 'DATA_DIR/initial-user.json']);
  writeFileSync(join(dir, 'admin-token'), token + '\n' + JSON.stringify(keySetToJson(ks)));
  t.ok(
    findSecrets(secrets, { dirs: { DATA_DIR: dir } }).findings.some(
      (f) => f.where === 'DATA_DIR/admin-token' && f.kind === 'client_write_key',
    ),
    'a key in admin-token is still found',
  );
  writeFileSync(join(dir, 'events.jsonl'), `{"token":"${token}"}\n`);
  t.ok(
    findSecrets(secrets, { dirs: { DATA_DIR: dir } }).findings.some((f) => f.where === 'DATA_DIR/events.jsonl' && f.kind === 'admin_token'),
    'the token elsewhere is found',
  );
  t.throws(() => findSecrets(secrets, { dirs: { DATA_DIR: join(dir, 'nope') } }), /does not exist/, 'a wrong path cannot pass vacuously');
  const rec = recorder();
  assertNoSecrets(rec, [], { texts: { x: 'y' } }, 'empty');
  t.ok(rec.failed.includes('empty: there are secrets to look for (0)'), 'no secrets to look for fails');
});

t.test('require-peer: a hidden peer fails in CI and skips outside it', async (t) => {
  const saved = { CI: process.env.CI, HIDE: process.env.GATEHOUSE_TEST_HIDE_PEERS };
  t.teardown(() => {
    for (const [k, v] of [
      ['CI', saved.CI],
      ['GATEHOUSE_TEST_HIDE_PEERS', saved.HIDE],
    ] as const)
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
  });
  process.env.GATEHOUSE_TEST_HIDE_PEERS = 'tshark';
  t.same(missingPeers('tshark'), ['tshark']);
  process.env.CI = 'true';
  let rec = recorder();
  t.equal(requirePeer(rec, 'tshark'), false);
  t.equal(rec.failed.length, 1, 'CI: failed');
  t.match(rec.failed[0], /tshark \(tshark\)/);
  rec = recorder();
  t.match(peerSkip(rec, 'tshark'), /missing: tshark/, 'CI: the tests are skipped ...');
  t.equal(rec.failed.length, 1, '... and the file fails');
  delete process.env.CI;
  rec = recorder();
  t.equal(requirePeer(rec, 'tshark'), false);
  t.same(rec.failed, [], 'outside CI: no failure');
  t.equal(rec.skipped.length, 1, 'outside CI: skipped');
  rec = recorder();
  t.match(peerSkip(rec, 'tshark'), /skipped outside CI only/);
  t.same(rec.failed, [], 'outside CI: peerSkip does not fail');
  delete process.env.GATEHOUSE_TEST_HIDE_PEERS;
  t.same(missingPeers('turnserver_definitely_absent' as never), ['turnserver_definitely_absent'], 'an absent program is missing');
});
