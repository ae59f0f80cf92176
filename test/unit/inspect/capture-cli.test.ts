import t from 'tap';
import { PassThrough, Writable } from 'node:stream';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runInspect } from '../../../src/cli/inspect.js';
import { encodePcap } from '../../../src/inspect/capture.js';
import { keySetToJson } from '../../../src/wire/keyset.js';
import { LINKTYPE_LINUX_SLL, buildUdpFrame } from '../../../src/wire/netpkt.js';
import { syntheticSession, SctpBuilder } from './pipeline-helpers.js';
import { assertNoSecrets, Secrets } from '../../e2e/helpers/secrets.js';

const dir = mkdtempSync(join(tmpdir(), 'gh-inspect-cli-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const T0 = Date.UTC(2026, 10, 22, 10, 0, 0);

// A capture of one synthetic session: a data channel carrying a PDF-looking file and a marker.
const s = syntheticSession();
const sctp = new SctpBuilder();
const pdf = Buffer.concat([Buffer.from('%PDF-1.7\n'), randomBytes(5000)]);
const marker = Buffer.from('the word is PROJECT-NIGHTINGALE');
const inner: { fromClient: boolean; data: Buffer }[] = [...s.hello];
for (const p of [sctp.init(), sctp.open(0, 'files'), sctp.message(0, marker), ...sctp.fragmented(0, pdf, 1200)])
  inner.push({ fromClient: true, data: s.appData(true, p) });
for (let i = 0; i < 40; i++) inner.push({ fromClient: false, data: s.srtp(false, i, randomBytes(80)) }); // > 30: the codec guess gives up and announces
const pcap = join(dir, 'cap.pcap');
writeFileSync(
  pcap,
  encodePcap(
    LINKTYPE_LINUX_SLL,
    inner.map((d, i) => ({
      time: T0 + i,
      data: d.fromClient
        ? buildUdpFrame(LINKTYPE_LINUX_SLL, '10.9.0.1', 40000, '10.9.0.2', 50000, d.data)
        : buildUdpFrame(LINKTYPE_LINUX_SLL, '10.9.0.2', 50000, '10.9.0.1', 40000, d.data),
    })),
  ),
);
const keys = join(dir, 'keys.json');
writeFileSync(keys, JSON.stringify([keySetToJson(s.keySet)]));

function io(tty = false) {
  const stdout = new PassThrough();
  let out = '';
  stdout.on('data', (d: Buffer) => (out += d.toString()));
  let err = '';
  const stderr = new Writable({
    write(c, _e, cb) {
      err += c.toString();
      cb();
    },
  }) as Writable & { isTTY?: boolean };
  if (tty) stderr.isTTY = true;
  return { io: { stdout, stderr }, out: () => out, err: () => err };
}

t.test('JSON key set, rules, progress on a TTY', async (t) => {
  const rules = join(dir, 'rules.yaml');
  writeFileSync(
    rules,
    [
      'keys:',
      '  required: true',
      'rules:',
      '  - id: no-pdf',
      '    when:',
      '      channel: data',
      '      file_type: [pdf]',
      '    action: block',
      '  - id: marker',
      '    when: { contains: ["NIGHTINGALE"] }',
      '    action: alert',
      '  - id: media-only',
      '    when: { channel: media, contains: ["x"] }',
      '    action: alert',
      '  - id: media-seen',
      '    when: { channel: media }',
      '    action: record',
    ].join('\n'),
  );
  const x = io(true);
  const code = await runInspect([pcap, '--keys', keys, '--rules', rules], x.io);
  t.equal(code, 0, x.err());
  const evs = x
    .out()
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, any>);
  const msgs = evs.filter((e) => e.event_type === 'datachannel.message').map((e) => e.datachannel.sha256);
  t.same(msgs, [sha(marker), sha(pdf)]);
  const file = evs.find((e) => e.event_type === 'file');
  t.equal(file?.file.file_type, 'pdf');
  t.equal(file?.file.sha256, sha(pdf));
  const alerts = evs.filter((e) => e.event_type === 'alert');
  t.same(
    alerts.map((a) => a.alert.signature_id).sort(),
    ['marker', 'media-seen', 'no-pdf'],
    'each rule once: the file is not alerted twice',
  );
  t.equal(alerts.find((a) => a.alert.signature_id === 'media-seen')?.gatehouse.rule_action, 'record');
  t.equal(alerts.find((a) => a.alert.signature_id === 'no-pdf')?.alert.action, 'blocked');
  t.equal(alerts.find((a) => a.alert.signature_id === 'marker')?.alert.action, 'allowed');
  t.equal(evs.filter((e) => e.event_type === 'rtp.packet').length, 40);
  t.match(x.err(), /\r\[[#.]+\] \d+%/, 'progress bar on a TTY');
  t.match(x.err(), /events: .*datachannel\.message=2/);
  t.match(x.err(), /alerts=3/);
  assertNoSecrets(t, new Secrets().keySet(s.keySet), { texts: { stdout: x.out(), stderr: x.err() } }, 'no key material');

  const y = io(false);
  t.equal(await runInspect([pcap, '--keys', keys, '--no-rtp-packets'], y.io), 0);
  t.notMatch(y.err(), /\r\[/, 'no progress bar without a TTY');
  t.notOk(y.out().includes('"rtp.packet"'));
  t.ok(y.out().includes('"rtp.stream"'));
});

t.test('input errors exit 2 with a clear message', async (t) => {
  const ng = join(dir, 'x.pcapng');
  const shb = Buffer.alloc(28);
  shb.writeUInt32BE(0x0a0d0d0a, 0);
  writeFileSync(ng, shb);
  const cases: [string[], RegExp][] = [
    [[], /missing CAPTURE\.pcap/],
    [[pcap], /missing --keys/],
    [[pcap, pcap, '--keys', keys], /expected one capture file/],
    [[pcap, '--keys', keys, '--bogus'], /Unknown option/],
    [[ng, '--keys', keys], /editcap -F pcap in\.pcapng out\.pcap/],
    [[join(dir, 'missing.pcap'), '--keys', keys], /cannot read capture/],
    [[pcap, '--keys', pcap], /no key lines found/],
  ];
  const badJson = join(dir, 'bad.json');
  writeFileSync(badJson, '[{"client_random": "zz"}]');
  cases.push([[pcap, '--keys', badJson], /invalid key-set file: entry 0/]);
  const badRules = join(dir, 'bad.yaml');
  writeFileSync(badRules, 'rules:\n  - id: a\n    when:\n      contains: ["x"]\n    action: explode\n');
  cases.push([[pcap, '--keys', keys, '--rules', badRules], /bad\.yaml:5:13: rules\[0\]\.action/]);
  for (const [argv, re] of cases) {
    const x = io();
    t.equal(await runInspect(argv, x.io), 2, argv.join(' '));
    t.match(x.err(), re);
  }
  const h = io();
  t.equal(await runInspect(['--help'], h.io), 0);
  t.match(h.out(), /Usage: gatehouse inspect/);
});
