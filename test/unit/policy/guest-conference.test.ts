/**
 * contract.md rule conditions `guest: true|false` and `conference: [glob, ...]`
 * (core.md §8 credentials): validation with located errors, and evaluation.
 */
import t from 'tap';
import { PolicyEngine, type Subject } from '../../../src/policy/engine.js';
import { globRegExp, parseRuleFile } from '../../../src/policy/rules-schema.js';
import { ConfigError } from '../../../src/util/errors.js';

const exe: Subject = { kind: 'file', direction: 'to_peer', size: 300, fileType: 'exe', data: Buffer.alloc(300) };
const zip: Subject = { ...exe, fileType: 'zip' };
const text: Subject = { kind: 'message', direction: 'to_peer', size: 2, data: Buffer.from('hi') };
const guestBoard = { user: 'guest/board-7/eve', groups: [], peerIp: '198.51.100.7', guest: true, conference: 'board-7' };
const guestOther = { user: 'guest/sales-1/eve', groups: [], peerIp: '198.51.100.7', guest: true, conference: 'sales-1' };
const alice = { user: 'alice', groups: ['trading'], peerIp: '198.51.100.7' };

const RULES = `rules:
  - id: guests-no-files
    when:
      guest: true
      conference: [board-*]
      file_type: [exe, zip]
    action: drop
  - id: users-alert
    when: { guest: false, file_type: exe }
    action: alert
  - id: any-guest
    when: { guest: true }
    action: alert
  - id: one-char
    when: { conference: "sales-?" }
    action: record
`;

t.test('parsed: guest and conference, with their defaults', async (t) => {
  const rf = parseRuleFile(RULES, 'r.yaml');
  t.equal(rf.rules[0]!.when.guest, true);
  t.same(rf.rules[0]!.when.conference, ['board-*']);
  t.equal(rf.rules[1]!.when.guest, false);
  t.same(rf.rules[1]!.when.conference, []);
  t.same(rf.rules[3]!.when.conference, ['sales-?'], 'one glob alone is a list of one');
  const plain = parseRuleFile('rules:\n  - { id: x, when: { file_type: exe } }\n', 'r.yaml');
  t.equal(plain.rules[0]!.when.guest, null, 'absent: either');
  t.same(plain.rules[0]!.when.conference, []);
});

t.test('evaluation: guest true/false, conference globs', async (t) => {
  const e = new PolicyEngine([parseRuleFile(RULES, 'r.yaml')]);
  const ids = (flow: Parameters<PolicyEngine['evaluate']>[0], s: Subject) => e.evaluate(flow, s).matches.map((m) => m.rule.id);
  t.same(ids(guestBoard, exe), ['guests-no-files', 'any-guest']);
  t.equal(e.evaluate(guestBoard, zip).action, 'drop', 'a board guest zip is dropped');
  t.same(ids(guestBoard, text), ['any-guest'], 'file_type still required');
  t.same(ids(guestOther, exe), ['any-guest', 'one-char'], 'another conference: not board-*');
  t.same(ids(alice, exe), ['users-alert'], 'a user is guest: false; no conference matches a flow without one');
  t.same(ids({ ...alice, conference: 'board-1' }, exe), ['users-alert'], 'a user in a board conference is not a guest');
  t.same(ids({ ...guestBoard, conference: 'sales-12' }, text), ['any-guest'], '? is exactly one character');
  t.same(
    e.recordsFlow(guestOther).map((r) => r.id),
    ['one-char'],
    'record rules select by conference too',
  );
  t.same(e.recordsFlow(alice), []);
});

t.test('globs are literal except * and ?', async (t) => {
  t.ok(globRegExp('board-*').test('board-'));
  t.ok(globRegExp('board-*').test('board-x/y'));
  t.notOk(globRegExp('board-*').test('xboard-1'), 'anchored');
  t.ok(globRegExp('a.b(c)+[d]{2}^$|\\').test('a.b(c)+[d]{2}^$|\\'));
  t.notOk(globRegExp('a.b').test('axb'), '. is literal');
  t.ok(globRegExp('*').test(''));
  t.notOk(globRegExp('?').test(''));
});

const broken: [string, string, RegExp][] = [
  ['guest not a boolean', 'rules:\n  - id: a\n    when:\n      guest: yes-please\n', /r\.yaml:4:\d+.*rules\[0\]\.when\.guest/s],
  [
    'conference not a string',
    'rules:\n  - id: a\n    when:\n      conference: [{ a: 1 }]\n',
    /r\.yaml:4:\d+.*rules\[0\]\.when\.conference/s,
  ],
  ['empty conference glob', 'rules:\n  - id: a\n    when:\n      conference: [""]\n', /r\.yaml:4:\d+.*conference.*1 to 128/s],
  ['conference glob too long', `rules:\n  - id: a\n    when:\n      conference: [${'x'.repeat(129)}]\n`, /r\.yaml:4:\d+.*1 to 128/s],
  ['unknown key near guest', 'rules:\n  - id: a\n    when:\n      guests: true\n', /r\.yaml:4:\d+.*guests/s],
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
