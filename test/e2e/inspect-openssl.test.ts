/**
 * End-to-end proof of `gatehouse inspect` against a real DTLS 1.2 stack: openssl
 * s_server / s_client on 127.0.0.1 (captured with dumpcap by scripts/fixtures/openssl-dtls.ts),
 * then `node bin/gatehouse.js inspect cap.pcap --keys keylog --hash records`. Every payload sent in either
 * direction must come out as an `appdata` event with the payload's SHA-256 — via the NSS key
 * log, and again via a JSON key-set file (contract.md) — and a `contains` rule must alert.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runOpensslDtls } from '../../scripts/fixtures/openssl-dtls.js';
import { KeyLog, keySetFromKeyLog } from '../../src/inspect/keylog.js';
import { keySetToJson } from '../../src/wire/keyset.js';
import { peerSkip } from './helpers/require-peer.js';
import { assertNoSecrets, Secrets } from './helpers/secrets.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

// Missing peers (or no permission to capture on lo): the tests are skipped with the
// reason, and in CI the file fails.
const missing = peerSkip(t, 'openssl', 'dumpcap', 'capture');

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

function gatehouse(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((res, rej) => {
    const p = spawn(process.execPath, [join(ROOT, 'bin', 'gatehouse.js'), ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => p.kill('SIGKILL'), 120_000);
    p.on('error', rej);
    p.on('close', (code) => {
      clearTimeout(timer);
      res({ code, stdout, stderr });
    });
  });
}

type Eve = Record<string, unknown> & { event_type: string; gatehouse?: Record<string, unknown> };
const parse = (out: string): Eve[] =>
  out
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Eve);

const cases = [
  { name: 'AES-128-GCM', cipher: 'ECDHE-ECDSA-AES128-GCM-SHA256', cert: 'ec' as const },
  { name: 'ChaCha20-Poly1305', cipher: 'ECDHE-ECDSA-CHACHA20-POLY1305', cert: 'ec' as const },
  { name: 'AES-256-CBC-SHA encrypt-then-MAC', cipher: 'ECDHE-RSA-AES256-SHA', cert: 'rsa' as const },
];

for (const c of cases) {
  t.test(`openssl DTLS 1.2 ${c.name}: appdata SHA-256s match what was sent`, { skip: missing, timeout: 240_000 }, async (t) => {
    const c2s = [
      Buffer.from(`hello PROJECT-NIGHTINGALE ${randomBytes(8).toString('hex')}\n`),
      Buffer.from(`${randomBytes(300).toString('hex')}\n`),
    ];
    const s2c = [Buffer.from(`reply ${randomBytes(16).toString('hex')}\n`)];
    const r = await runOpensslDtls({ cipher: c.cipher, cert: c.cert, c2s, s2c });
    t.teardown(() => rmSync(r.dir, { recursive: true, force: true }));

    // --hash records: appdata events carry the record's SHA-256 only when asked (issue 13).
    const run = await gatehouse(['inspect', r.pcap, '--keys', r.keylog, '--hash', 'records']);
    t.equal(run.code, 0, `exit 0; stderr: ${run.stderr}`);
    const evs = parse(run.stdout);
    const hs = evs.find((e) => e.event_type === 'dtls.handshake');
    t.ok(hs, 'handshake seen');
    const app = evs.filter((e) => e.event_type === 'appdata');
    const got = (dir: string) => app.filter((e) => e.gatehouse?.direction === dir).map((e) => (e.appdata as { sha256: string }).sha256);
    t.same(got('c2s'), c2s.map(sha), 'client → server payloads');
    t.same(got('s2c'), s2c.map(sha), 'server → client payloads');
    t.ok(app.every((e) => e.src_ip === '127.0.0.1' && e.proto === 'UDP'));
    const clientToServer = app.find((e) => e.gatehouse?.direction === 'c2s')!;
    t.equal(clientToServer.dest_port, r.serverPort, 'c2s goes to the s_server port');
    t.notOk(
      evs.some((e) => e.event_type === 'undecryptable'),
      'nothing undecryptable',
    );
    t.match(run.stderr, /events: .*appdata=3/, 'summary on stderr');
    const kl = readFileSync(r.keylog, 'utf8');

    // The same capture with a JSON key-set file (contract.md) derived from the key log.
    const d = hs!.dtls as {
      client_random: string;
      server_random: string;
      cipher_suite: number;
      encrypt_then_mac?: boolean;
      version: 'DTLS1.2';
    };
    const entry = KeyLog.parse(kl).get(d.client_random)!;
    const ks = keySetFromKeyLog(entry, {
      version: 'DTLS1.2',
      clientRandom: Buffer.from(d.client_random, 'hex'),
      serverRandom: Buffer.from(d.server_random, 'hex'),
      cipherSuite: d.cipher_suite,
      encryptThenMac: !!d.encrypt_then_mac,
    });
    t.ok(ks, 'key set derived');
    const keysJson = join(r.dir, 'keys.json');
    writeFileSync(keysJson, JSON.stringify([keySetToJson(ks!)]));
    const rules = join(r.dir, 'rules.yaml');
    writeFileSync(
      rules,
      'rules:\n  - id: nightingale\n    when:\n      contains: ["PROJECT-NIGHTINGALE"]\n    action: block\n  - id: by-group\n    when:\n      group: [trading]\n    action: record\n',
    );
    const run2 = await gatehouse(['inspect', r.pcap, '--keys', keysJson, '--rules', rules]);
    t.equal(run2.code, 0, run2.stderr);
    // No key material in either run's output (the key log's secrets and the key set's fields).
    const secrets = new Secrets().keyFile(r.keylog).keyFile(keysJson);
    t.ok(secrets.list.some((s) => s.kind === 'CLIENT_RANDOM') && secrets.list.some((s) => s.kind === 'client_write_key'));
    assertNoSecrets(
      t,
      secrets,
      {
        texts: {
          'key log run stdout': run.stdout,
          'key log run stderr': run.stderr,
          'key file run stdout': run2.stdout,
          'key file run stderr': run2.stderr,
        },
      },
      'no key material printed',
    );
    const evs2 = parse(run2.stdout);
    const app2 = evs2.filter((e) => e.event_type === 'appdata').map((e) => (e.appdata as { sha256: string }).sha256);
    t.same(app2.sort(), [...c2s, ...s2c].map(sha).sort(), 'JSON key sets decrypt the same bytes');
    const alerts = evs2.filter((e) => e.event_type === 'alert');
    t.equal(alerts.length, 1, 'one alert: the payload with the marker');
    t.equal((alerts[0]?.alert as { signature_id: string }).signature_id, 'nightingale');
    t.equal((alerts[0]?.alert as { action: string }).action, 'blocked');
    t.notOk(
      alerts.some((a) => (a.alert as { signature_id: string }).signature_id === 'by-group'),
      'no TURN user offline: group rules do not match',
    );
  });
}

t.test('usage errors exit 2 with a clear message', { timeout: 60_000 }, async (t) => {
  const a = await gatehouse(['inspect']);
  t.equal(a.code, 2);
  t.match(a.stderr, /missing CAPTURE\.pcap/);
  const b = await gatehouse(['inspect', '/nonexistent.pcap', '--keys', '/nonexistent.keys']);
  t.equal(b.code, 2);
  t.match(b.stderr, /cannot read keys/);
  const h = await gatehouse(['inspect', '--help']);
  t.equal(h.code, 0);
  t.match(h.stdout, /--keys KEYS/);
});
