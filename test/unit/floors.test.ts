// The floors of ../shared/design.md, checked on every import of src/: arrows point down.
// A module may import its own floor and the floors listed for it here; anything else
// fails this test with the file, the line and the import that goes against the arrows.
import t from 'tap';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';

const SRC = resolve(import.meta.dirname, '../../src');

/** Floor → floors it may import. `inspect/events` is the event shapes only (no parser). */
const ALLOWED: Record<string, string[]> = {
  util: [],
  wire: [], // pure codecs: nothing of ours
  events: ['util'],
  config: ['util'],
  turn: ['wire', 'util', 'events', 'config'],
  pcp: ['wire', 'util', 'events', 'config'],
  inspect: ['wire', 'util', 'events'],
  policy: ['util', 'config', 'inspect/events'],
  record: ['wire', 'util', 'events', 'inspect/events'],
  store: ['util', 'config', 'policy'],
  // The dashboard shows `gatehouse verify`'s result (the manifest reader, not the recorders)
  // and limits failed logins with the core's FailureLimiter (core.md §2), not a copy of it.
  admin: ['util', 'events', 'config', 'record/manifest', 'core/ratelimit'],
  scan: ['util', 'config'],
  endpoint: ['wire', 'util'],
  keyagent: ['inspect', 'endpoint', 'wire', 'util'], // a desktop program: key log (inspect), gateway pinning (endpoint)
  core: ['wire', 'util', 'events', 'config', 'store', 'policy'],
  // Shared state of a cluster (store.redis): quotas, blocks, users, flow registry, policy
  // distribution; above the servers and policy it shares, below gateway which wires it.
  cluster: ['turn', 'policy', 'store', 'events', 'config', 'wire', 'util'],
  gateway: ['cluster', 'core', 'turn', 'pcp', 'inspect', 'policy', 'record', 'store', 'admin', 'scan', 'events', 'config', 'wire', 'util'],
  cli: ['*'],
};

function walk(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...walk(p));
    else if (/\.(ts|js|mjs)$/.test(name)) out.push(p);
  }
  return out;
}

const IMPORT = /(?:^|[^\w.])(?:import|export)\s*(?:type\s+)?(?:[^'"]*?\sfrom\s*)?\(?\s*['"](\.{1,2}\/[^'"]+)['"]/g;

function violations(files: string[], read: (f: string) => string = (f) => readFileSync(f, 'utf8')): string[] {
  const bad: string[] = [];
  for (const file of files) {
    const rel = relative(SRC, file);
    const floor = rel.split('/')[0]!;
    const allowed = ALLOWED[floor];
    if (!allowed) {
      bad.push(`${rel}: floor "${floor}" is not in design.md (add it to this test and the README)`);
      continue;
    }
    const text = read(file);
    const lines = text.split('\n');
    lines.forEach((line, i) => {
      for (const m of line.matchAll(IMPORT)) {
        const target = relative(SRC, resolve(dirname(file), m[1]!)).replace(/\.(js|ts)$/, '');
        const to = target.split('/')[0]!;
        if (to === floor || allowed.includes('*') || allowed.includes(to) || allowed.includes(target)) continue;
        bad.push(`${rel}:${i + 1}: ${floor} imports ${target} (design.md: ${floor} may import ${allowed.join(', ') || 'nothing of ours'})`);
      }
    });
  }
  return bad;
}

t.test('every import in src/ follows the arrows of design.md', async (t) => {
  const files = walk(SRC);
  t.ok(files.length > 50, `scanned ${files.length} files`);
  t.same(violations(files), []);
});

t.test('the check reports an import against the arrows, with file and line', async (t) => {
  const fake = join(SRC, 'wire', 'fake.ts');
  const text = `// a codec\nimport { TurnServer } from '../turn/server.js';\nimport type { X } from './stun.js';\n`;
  t.same(
    violations([fake], () => text),
    ['wire/fake.ts:2: wire imports turn/server (design.md: wire may import nothing of ours)'],
  );
  const policy = join(SRC, 'policy', 'fake.ts');
  const ptext = `import type { InspectEvent } from '../inspect/events.js';\nimport { demux } from '../wire/demux.js';\n`;
  t.equal(violations([policy], () => ptext).length, 1, 'policy may see event shapes, not parsers');
  const cluster = join(SRC, 'cluster', 'fake.ts');
  const ctext = `import type { FlowBlockList } from '../gateway/block-list.js';\nimport type { QuotaTracker } from '../policy/quota.js';\n`;
  t.same(
    violations([cluster], () => ctext).map((v) => v.split(' (')[0]),
    ['cluster/fake.ts:1: cluster imports gateway/block-list'],
    'cluster may share policy state, never import the gateway that wires it',
  );
});
