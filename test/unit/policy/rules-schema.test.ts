import t from 'tap';
import { parseRuleFile, parseDuration, parseSize } from '../../../src/policy/rules-schema.js';
import { ConfigError } from '../../../src/util/errors.js';
import { main } from '../../../src/cli/main.js';
import { Writable } from 'node:stream';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

t.test('durations and sizes', async (t) => {
  t.equal(parseDuration('10s'), 10_000);
  t.equal(parseDuration('5m'), 300_000);
  t.equal(parseDuration('ten'), null);
  t.equal(parseSize('500MiB'), 500 * 1024 * 1024);
  t.equal(parseSize('2GB'), 2e9);
  t.equal(parseSize('lots'), null);
});

t.test('the contract example parses', async (t) => {
  const rf = parseRuleFile(
    `keys:
  required: true
  deadline: 10s
  unverified: hold
  block_for: 5m
rules:
  - id: no-executables
    when:
      channel: data
      file_type: [exe, elf, msi]
    action: block
  - id: nightingale
    when:
      contains: ["PROJECT-NIGHTINGALE"]
    action: block
quotas:
  - id: contractors-daily
    groups: [contractors]
    limit: 500MiB
    period: day
    vital: [10.20.0.0/16]
`,
    'r.yaml',
  );
  t.equal(rf.keys?.deadline, 10_000);
  t.equal(rf.keys?.block_for, 300_000);
  t.equal(rf.rules.length, 2);
  t.same(rf.rules[0]!.when.file_type, ['exe', 'elf', 'msi']);
  t.equal(rf.quotas[0]!.limit, 500 * 1024 * 1024);
});

const broken: [string, string, RegExp][] = [
  ['misspelt selector', 'rules:\n  - id: a\n    when:\n      chanel: data\n', /^r\.yaml:4:7: rules\[0\]\.when\.chanel: unknown key/],
  [
    'bad action',
    'rules:\n  - id: a\n    action: nuke\n',
    /^r\.yaml:3:13: rules\[0\]\.action: expected one of block \| alert \| record \| drop/,
  ],
  ['bad file type', 'rules:\n  - id: a\n    when: { file_type: [exe, com] }\n', /rules\[0\]\.when\.file_type\[1\]: expected one of/],
  ['missing id', 'rules:\n  - action: alert\n', /^r\.yaml:2:5: rules\[0\]\.id: every rule needs an id/],
  ['duplicate id', 'rules:\n  - id: a\n  - id: a\n', /^r\.yaml:3:5: rules\[1\]\.id: duplicate rule id "a"/],
  ['bad duration', 'keys:\n  deadline: soon\n', /^r\.yaml:2:13: keys\.deadline: expected a duration/],
  ['bad unverified', 'keys:\n  unverified: maybe\n', /keys\.unverified: expected one of hold \| pass \| drop/],
  ['bad quota size', 'quotas:\n  - id: q\n    limit: lots\n', /^r\.yaml:3:12: quotas\[0\]\.limit: expected a size/],
  ['quota period', 'quotas:\n  - id: q\n    limit: 1GB\n    period: year\n', /quotas\[0\]\.period: expected one of day \| week \| month/],
  ['quota without limit', 'quotas:\n  - id: q\n', /quotas\[0\]\.limit: a quota needs a limit/],
  ['bad vital CIDR', 'quotas:\n  - id: q\n    limit: 1GB\n    vital: [10.0.0.0/99]\n', /quotas\[0\]\.vital\[0\]: prefix length/],
  [
    'invalid regex',
    'rules:\n  - id: a\n    when: { regex: ["(unclosed"] }\n',
    /rules\[0\]\.when\.regex\[0\]: not a valid regular expression/,
  ],
  ['catastrophic regex', 'rules:\n  - id: a\n    when: { regex: ["(a+)+$"] }\n', /nested quantifiers/],
  ['bad sha256', 'rules:\n  - id: a\n    when: { sha256: [abc] }\n', /rules\[0\]\.when\.sha256\[0\]: expected 64 hex digits/],
];
for (const [name, text, re] of broken) {
  t.test(`rejects: ${name}`, async (t) => {
    let err: unknown;
    try {
      parseRuleFile(text, 'r.yaml');
    } catch (e) {
      err = e;
    }
    t.ok(err instanceof ConfigError, 'a ConfigError');
    t.match((err as Error).message, re);
  });
}

function capture() {
  let out = '';
  const w = new Writable({
    write(c, _e, cb) {
      out += c;
      cb();
    },
  });
  return { w, text: () => out };
}

t.test('gatehouse rules check: shipped packs pass, a broken file fails non-zero', async (t) => {
  const o = capture();
  const e = capture();
  t.equal(await main(['rules', 'check', 'rules'], { stdout: o.w, stderr: e.w }), 0, e.text());
  t.match(o.text(), /10-block-executables\.yaml: ok/);
  const dir = mkdtempSync(join(tmpdir(), 'gh-rules-'));
  writeFileSync(join(dir, 'bad.yaml'), 'rules:\n  - id: x\n    action: explode\n');
  const o2 = capture();
  const e2 = capture();
  t.equal(await main(['rules', 'check', dir], { stdout: o2.w, stderr: e2.w }), 1);
  t.match(e2.text(), /bad\.yaml:3:13: rules\[0\]\.action/);
});
