// `gatehouse endpoint` end to end, in-process: a compliant offerer (escrow agent,
// --consent always, pinned gateway certificate from a file) sends a file over a data
// channel through Gatehouse's TurnServer to a plain werift answerer (--no-escrow). The
// gateway side is the stub escrow extension (test/unit/endpoint/helpers.ts).
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Method } from '../../src/wire/stun.js';
import { runEndpoint, ENDPOINT_HELP } from '../../src/cli/endpoint.js';
import { makeGateway, startTestTurn, stubEscrowExtension } from '../unit/endpoint/helpers.js';
import { assertNoSecrets, Secrets } from './helpers/secrets.js';
import { captureIo } from './helpers/run.js';

t.test('--help and usage errors', async (t) => {
  const a = captureIo();
  t.equal(await runEndpoint(['--help'], a.io), 0);
  t.equal(a.out(), ENDPOINT_HELP);
  const b = captureIo();
  t.equal(await runEndpoint(['--role', 'offer'], b.io), 2);
  t.match(b.err(), /--signal-dir/);
  const c = captureIo();
  t.equal(
    await runEndpoint(
      ['--role', 'offer', '--signal-dir', '/tmp/x', '--turn', 'turn:127.0.0.1:3478', '--user', 'u', '--password', 'p'],
      c.io,
    ),
    2,
    'no trust anchor',
  );
  t.match(c.err(), /fingerprint|CA/);
  const d = captureIo();
  t.equal(await runEndpoint(['--role', 'offer', '--signal-dir', '/tmp/x', '--consent', 'maybe', '--no-escrow'], d.io), 2);
});

t.test('compliant offerer sends a file through the gateway; keys escrowed', async (t) => {
  const gw = await makeGateway();
  const { ext, log } = stubEscrowExtension(gw, { deadline: 5, flags: 0x0003 });
  const { server, port } = await startTestTurn({ relayPorts: [48000, 48999], extensions: [ext] });
  const dir = mkdtempSync(join(tmpdir(), 'gh-endpoint-'));
  t.teardown(async () => {
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  const file = join(dir, 'report.bin');
  const data = randomBytes(100_000);
  writeFileSync(file, data);
  writeFileSync(join(dir, 'gw.pem'), gw.certPem);
  const sig = join(dir, 'signal');
  const recv = join(dir, 'recv');
  const off = captureIo();
  const ans = captureIo();
  const [rcOffer, rcAnswer] = await Promise.all([
    runEndpoint(
      [
        '--role',
        'offer',
        '--signal-dir',
        sig,
        '--turn',
        `turn:127.0.0.1:${port}`,
        '--user',
        'alice',
        '--password',
        'secret',
        '--gateway-cert-fingerprint',
        gw.fingerprint.toString('hex'),
        '--gateway-cert',
        join(dir, 'gw.pem'),
        '--consent',
        'always',
        '--send-file',
        file,
        '--message',
        'hello',
        '--hold',
        '3',
        '--timeout',
        '90',
        '--json',
      ],
      off.io,
    ),
    runEndpoint(
      ['--role', 'answer', '--signal-dir', sig, '--no-escrow', '--receive-dir', recv, '--hold', '4', '--timeout', '90', '--json'],
      ans.io,
    ),
  ]);
  t.equal(rcOffer, 0, `offerer ok: ${off.err()}`);
  t.equal(rcAnswer, 0, `answerer ok: ${ans.err()}`);
  const so = JSON.parse(off.out()) as { connected: boolean; escrow: Array<{ kind: string; method: string; statuses: number[] | null }> };
  const sa = JSON.parse(ans.out()) as { receivedFiles: Array<{ name: string; ok: boolean }>; messages: string[] };
  t.ok(so.connected);
  t.same(sa.messages, ['hello']);
  t.same(
    sa.receivedFiles.map((f) => [f.name, f.ok]),
    [['report.bin', true]],
  );
  t.equal(
    createHash('sha256')
      .update(readFileSync(join(recv, 'report.bin')))
      .digest('hex'),
    createHash('sha256').update(data).digest('hex'),
    'file byte-identical',
  );
  t.ok(
    so.escrow.some((r) => r.kind === 'write-keys' && r.method === 'ChannelBind' && JSON.stringify(r.statuses) === '[0]'),
    'summary shows escrow with KEY-STATUS',
  );
  t.ok(log.writeKeys.length >= 1 && log.writeKeys.every((w) => w.method === Method.ChannelBind), 'gateway got WRITE-KEYS in a ChannelBind');
  const secrets = new Secrets().turnPassword('alice', 'secret', 'gatehouse.local', { word: true });
  for (const w of log.writeKeys) secrets.keySets(w.keySets, 'escrowed key set');
  assertNoSecrets(
    t,
    secrets,
    { texts: { 'offerer stdout': off.out(), 'offerer stderr': off.err(), 'answerer stdout': ans.out(), 'answerer stderr': ans.err() } },
    'no key material or password in output',
  );
});
