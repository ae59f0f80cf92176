/**
 * contract.md rule condition `org: [glob, ...]`: the organisation of a user admitted by
 * authentication transfer (core.md §6). Validation with located errors, and evaluation
 * (a flow without an org never matches; globs as for `conference`).
 */
import t from 'tap';
import { PolicyEngine, type Subject } from '../../../src/policy/engine.js';
import { parseRuleFile } from '../../../src/policy/rules-schema.js';
import { ConfigError } from '../../../src/util/errors.js';

const exe: Subject = { kind: 'file', direction: 'to_peer', size: 300, fileType: 'exe', data: Buffer.alloc(300) };
const partner = { user: 'alice', groups: [], peerIp: '198.51.100.7', org: 'partner-a' };
const other = { ...partner, org: 'acme' };
const local = { user: 'alice', groups: ['trading'], peerIp: '198.51.100.7' };

const RULES = `rules:
  - id: partners-no-exe
    when:
      org: [partner-*]
      file_type: exe
    action: drop
  - id: record-acme
    when: { org: acme }
    action: record
  - id: everyone
    when: { file_type: exe }
    action: alert
`;

t.test('parsed: org globs, default empty', async (t) => {
  const rf = parseRuleFile(RULES, 'r.yaml');
  t.same(rf.rules[0]!.when.org, ['partner-*']);
  t.same(rf.rules[1]!.when.org, ['acme'], 'one glob alone is a list of one');
  t.same(rf.rules[2]!.when.org, [], 'absent: any flow');
});

t.test('evaluation: only flows of that organisation', async (t) => {
  const e = new PolicyEngine([parseRuleFile(RULES, 'r.yaml')]);
  const ids = (flow: Parameters<PolicyEngine['evaluate']>[0]) => e.evaluate(flow, exe).matches.map((m) => m.rule.id);
  t.same(ids(partner), ['partners-no-exe', 'everyone']);
  t.equal(e.evaluate(partner, exe).action, 'drop');
  t.same(ids(other), ['record-acme', 'everyone'], 'acme is not partner-*, but is acme');
  t.same(ids(local), ['everyone'], "the core's own user has no org: no org rule selects it");
  t.same(ids({ ...partner, org: 'xpartner-a' }), ['everyone'], 'anchored');
  t.same(
    e.recordsFlow(other).map((r) => r.id),
    ['record-acme'],
    'record rules select by org',
  );
  t.same(e.recordsFlow(local), []);
  t.same(e.recordsFlow(partner), []);
});

const broken: [string, string, RegExp][] = [
  ['org not a string', 'rules:\n  - id: a\n    when:\n      org: [{ a: 1 }]\n', /r\.yaml:4:\d+.*rules\[0\]\.when\.org/s],
  ['empty org glob', 'rules:\n  - id: a\n    when:\n      org: [""]\n', /r\.yaml:4:\d+.*org.*1 to 128/s],
  ['org glob too long', `rules:\n  - id: a\n    when:\n      org: [${'x'.repeat(129)}]\n`, /r\.yaml:4:\d+.*1 to 128/s],
  ['unknown key near org', 'rules:\n  - id: a\n    when:\n      orgs: [a]\n', /r\.yaml:4:\d+.*orgs/s],
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
