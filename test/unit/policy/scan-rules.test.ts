/**
 * Issue 9: the `scan: icap | clamd` condition. The engine stays synchronous: it marks a
 * reassembled file as "needs scan" (Verdict.scans) and the gateway runs the scan.
 */
import t from 'tap';
import { Writable } from 'node:stream';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PolicyEngine, type Subject } from '../../../src/policy/engine.js';
import { parseRuleFile } from '../../../src/policy/rules-schema.js';
import { loadPolicy } from '../../../src/policy/loader.js';
import { main } from '../../../src/cli/main.js';

const RULES = `rules:
  - { id: av, description: Malware, when: { scan: icap }, action: block }
  - { id: av-pdf, when: { scan: clamd, file_type: pdf }, action: drop }
  - { id: exe, when: { file_type: exe }, action: alert }
`;
const flow = { groups: [] as string[] };
const file = (extra: Partial<Subject> = {}): Subject => ({
  kind: 'file',
  direction: 'to_peer',
  size: 10,
  data: Buffer.alloc(10),
  fileType: 'unknown',
  transfer: true,
  ...extra,
});

t.test('scan marks reassembled files and single-message files; it is no match by itself', async (t) => {
  const e = new PolicyEngine([parseRuleFile(RULES, 'r.yaml')]);
  const v = e.evaluate(flow, file());
  t.equal(v.action, 'forward', 'a scan rule alone decides nothing yet');
  t.same(v.matches, []);
  t.same(
    v.scans?.map((s) => [s.rule.id, s.scanner, s.action]),
    [['av', 'icap', 'block']],
  );
  const pdf = e.evaluate(flow, file({ fileType: 'pdf' }));
  t.same(
    pdf.scans?.map((s) => [s.rule.id, s.scanner]),
    [
      ['av', 'icap'],
      ['av-pdf', 'clamd'],
    ],
    'the other conditions still select',
  );
  const exe = e.evaluate(flow, file({ fileType: 'exe' }));
  t.equal(exe.action, 'alert', 'other rules match as before');
  t.equal(exe.scans?.length, 1);
  t.equal(
    e.evaluate(flow, file({ transfer: false, inTransfer: true })).scans,
    undefined,
    'a message inside a transfer is not scanned on its own',
  );
  t.equal(e.evaluate(flow, file({ transfer: false })).scans?.length, 1, 'a file sent as one message is scanned');
  t.equal(e.evaluate(flow, { kind: 'message', direction: 'to_peer', size: 3, data: Buffer.from('abc') }).scans, undefined);
  t.equal(e.needsFileContent, true, 'scan rules need the whole content spooled');
  t.same([...e.scanners].sort(), ['clamd', 'icap']);
  t.equal(new PolicyEngine([parseRuleFile('rules: [{ id: x, when: { file_type: exe } }]', 'r.yaml')]).needsFileContent, false);
});

t.test('a record rule with scan does not record flows from their start', async (t) => {
  const e = new PolicyEngine([parseRuleFile('rules: [{ id: r, when: { scan: icap }, action: record }]', 'r.yaml')]);
  t.same(e.recordsFlow(flow), []);
});

t.test('located errors', async (t) => {
  t.throws(
    () => parseRuleFile('rules:\n  - id: a\n    when: { scan: virustotal }\n', 'r.yaml'),
    /^r\.yaml:3:\d+: rules\[0\]\.when\.scan: /,
  );
  t.throws(
    () => parseRuleFile('rules:\n  - id: a\n    when:\n      channel: media\n      scan: icap\n', 'r.yaml'),
    /^r\.yaml:5:\d+: rules\[0\]\.when\.scan: scan looks at files on data channels/,
  );
  t.throws(
    () => parseRuleFile('rules:\n  - id: a\n    when:\n      scan: clamd\n', 'r.yaml', { scanners: new Set(['icap']) }),
    /^r\.yaml:4:\d+: rules\[0\]\.when\.scan: scan: clamd needs a scanner: set scan\.clamd/,
  );
  t.doesNotThrow(() => parseRuleFile('rules:\n  - id: a\n    when:\n      scan: icap\n', 'r.yaml', { scanners: new Set(['icap']) }));
});

t.test('loadPolicy refuses a scan rule whose scanner is not configured; rules check accepts it', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gh-scanrules-'));
  const f = join(dir, 'av.yaml');
  writeFileSync(f, RULES);
  await t.rejects(loadPolicy(f, { scanners: new Set(['icap']) }), /scan: clamd needs a scanner/);
  t.equal((await loadPolicy(f, { scanners: new Set(['icap', 'clamd']) })).engine.rules.length, 3);
  const out: string[] = [];
  const w = new Writable({ write: (c, _e, cb) => (out.push(String(c)), cb()) });
  t.equal(await main(['rules', 'check', f], { stdout: w, stderr: w }), 0, out.join(''));
});
