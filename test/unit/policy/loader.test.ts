import t from 'tap';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PolicyHolder } from '../../../src/policy/loader.js';
import { silentLogger } from '../../../src/util/log.js';

const alice = { user: 'alice', groups: [] as string[] };
const msg = (s: string) => ({ kind: 'message' as const, direction: 'to_peer' as const, data: Buffer.from(s), size: s.length });

t.test('reload swaps the engine; a broken file keeps the rules in force and says where', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gh-reload-'));
  writeFileSync(join(dir, 'a.yaml'), 'rules:\n  - { id: one, when: { contains: [alpha] }, action: block }\n');
  const h = await PolicyHolder.open(dir, silentLogger);
  t.teardown(() => h.close());
  const flowEngine = () => h.current; // live flows read `current` per decision
  t.equal(flowEngine().evaluate(alice, msg('alpha')).action, 'block');

  writeFileSync(join(dir, 'a.yaml'), 'rules:\n  - { id: two, when: { contains: [beta] }, action: drop }\n');
  const ok = await h.reload();
  t.ok(ok.ok);
  t.equal(flowEngine().evaluate(alice, msg('alpha')).action, 'forward');
  t.equal(flowEngine().evaluate(alice, msg('beta')).action, 'drop');

  writeFileSync(join(dir, 'b.yaml'), 'rules:\n  - { id: bad, action: explode }\n');
  const bad = await h.reload();
  t.notOk(bad.ok);
  t.match(bad.message, /b\.yaml:2:\d+: rules\[0\]\.action: expected one of/);
  t.match(bad.message, /previous rules kept/);
  t.equal(flowEngine().evaluate(alice, msg('beta')).action, 'drop', 'old rules still in force');
});

t.test('a missing rules path means no rules, not a crash', async (t) => {
  const h = await PolicyHolder.open(join(tmpdir(), 'no-such-rules-dir-gh'), silentLogger);
  t.equal(h.current.rules.length, 0);
  h.close();
});

t.test('file changes trigger a reload', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gh-reload-'));
  writeFileSync(join(dir, 'a.yaml'), 'rules: []\n');
  const h = await PolicyHolder.open(dir, silentLogger);
  t.teardown(() => h.close());
  const changed = new Promise<void>((r) => h.onChange(() => r()));
  h.watch();
  writeFileSync(join(dir, 'a.yaml'), 'rules:\n  - { id: w, when: { contains: [gamma] }, action: alert }\n');
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([changed, new Promise((_, rej) => (timer = setTimeout(() => rej(new Error('no reload within 10 s')), 10_000)))]);
  clearTimeout(timer);
  t.equal(h.current.evaluate(alice, msg('gamma')).action, 'alert');
});
