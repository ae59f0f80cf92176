import t from 'tap';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { PolicyEngine, type Subject } from '../../../src/policy/engine.js';
import { parseRuleFile } from '../../../src/policy/rules-schema.js';

const msg = (text: string, extra: Partial<Subject> = {}): Subject => ({
  kind: 'message',
  direction: 'to_peer',
  data: Buffer.from(text),
  size: Buffer.byteLength(text),
  label: 'chat',
  ...extra,
});
const alice = { user: 'alice', groups: ['trading'], peerIp: '198.51.100.7' };
const bob = { user: 'bob', groups: ['contractors'], peerIp: '10.20.1.1' };

t.test('contains, precedence and all-match reporting', async (t) => {
  const e = new PolicyEngine([
    parseRuleFile(
      `rules:
  - id: alert-word
    when: { contains_text: [confidential] }
    action: alert
  - id: nightingale
    when: { contains: ["PROJECT-NIGHTINGALE"] }
    action: block
  - id: drop-word
    when: { contains: ["CONFIDENTIAL"] }
    action: drop
`,
      'r.yaml',
    ),
  ]);
  t.equal(e.evaluate(alice, msg('hello')).action, 'forward');
  const v = e.evaluate(alice, msg('this is CONFIDENTIAL'));
  t.equal(v.action, 'drop', 'drop outranks alert');
  t.same(
    v.matches.map((m) => m.rule.id),
    ['alert-word', 'drop-word'],
    'every match reported, in rule order',
  );
  const b = e.evaluate(alice, msg('PROJECT-NIGHTINGALE and confidential'));
  t.equal(b.action, 'block', 'block outranks everything');
  t.equal(
    e.evaluate(alice, { kind: 'media', direction: 'to_peer', size: 10, data: Buffer.from('PROJECT-NIGHTINGALE') }).action,
    'forward',
    'contains does not look into media',
  );
});

t.test('selectors: user, group, peer CIDR, channel, direction, label, protocol, size', async (t) => {
  const e = new PolicyEngine([
    parseRuleFile(
      `rules:
  - { id: g, when: { group: [contractors], channel: data }, action: alert }
  - { id: u, when: { user: alice, direction: from_peer }, action: alert }
  - { id: p, when: { peer: [10.20.0.0/16] }, action: alert }
  - { id: l, when: { label: [files], protocol: [ft] }, action: alert }
  - { id: big, when: { size: { min: 1KiB } }, action: alert }
`,
      'r.yaml',
    ),
  ]);
  const ids = (f: typeof alice, s: Subject) => e.evaluate(f, s).matches.map((m) => m.rule.id);
  t.same(ids(bob, msg('x')), ['g', 'p']);
  t.same(ids(alice, msg('x')), []);
  t.same(ids(alice, msg('x', { direction: 'from_peer' })), ['u']);
  t.same(ids(alice, msg('x', { label: 'files', protocol: 'ft' })), ['l']);
  t.same(ids(alice, msg('x', { label: 'files' })), [], 'protocol must hold too');
  t.same(ids(alice, msg('x'.repeat(2000))), ['big']);
  t.same(ids(bob, { kind: 'media', direction: 'to_peer', size: 1 }), ['p'], 'channel: data does not select media');
});

t.test('file_type, sha256 inline and from a hash list, regex, media kind and codec', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gh-pol-'));
  const evil = createHash('sha256').update('evil').digest('hex');
  const listed = createHash('sha256').update('listed').digest('hex');
  writeFileSync(join(dir, 'hashes.txt'), `# known bad\n${listed}  sample.bin\n${'0'.repeat(64)}\n`);
  const e = new PolicyEngine([
    parseRuleFile(
      `rules:
  - { id: exe, when: { file_type: [exe, elf] }, action: block }
  - { id: inline, when: { sha256: [${evil}] }, action: block }
  - { id: list, when: { sha256_list: ${join(dir, 'hashes.txt')} }, action: drop }
  - { id: card, when: { regex: ['\\b4[0-9]{15}\\b'] }, action: alert }
  - { id: video, when: { media: [video], codec: [VP8] }, action: record }
`,
      'r.yaml',
    ),
  ]);
  await e.loadHashLists();
  const file = (name: string, fileType = 'unknown'): Subject => ({
    kind: 'file',
    direction: 'to_peer',
    size: 4,
    data: Buffer.from(name),
    sha256: createHash('sha256').update(name).digest('hex'),
    fileType,
  });
  t.equal(e.evaluate(alice, file('x', 'elf')).action, 'block');
  t.equal(e.evaluate(alice, file('evil')).matches[0]!.rule.id, 'inline');
  t.equal(e.evaluate(alice, file('listed')).action, 'drop');
  t.equal(e.evaluate(alice, file('other')).action, 'forward');
  t.equal(e.evaluate(alice, msg('card 4111111111111111 ok')).action, 'alert');
  t.equal(e.evaluate(alice, msg('card 411111111111111 short')).action, 'forward');
  t.equal(e.evaluate(alice, { kind: 'media', direction: 'to_peer', size: 1, mediaKind: 'video', codec: 'vp8' }).action, 'record');
  t.equal(e.evaluate(alice, { kind: 'media', direction: 'to_peer', size: 1, mediaKind: 'audio', codec: 'opus' }).action, 'forward');
});

t.test('record rules pick flows; the last keys section holds', async (t) => {
  const e = new PolicyEngine([
    parseRuleFile('keys: { required: false }\nrules:\n  - { id: rec, when: { group: [trading] }, action: record }\n', 'a.yaml'),
    parseRuleFile('keys: { required: true, deadline: 3s }\n', 'b.yaml'),
  ]);
  t.same(
    e.recordsFlow(alice).map((r) => r.id),
    ['rec'],
  );
  t.same(e.recordsFlow(bob), []);
  t.equal(e.keys?.required, true);
  t.equal(e.keys?.deadline, 3000);
});
