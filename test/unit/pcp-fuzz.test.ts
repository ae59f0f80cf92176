// 10^5 fuzzed inputs through the PCP codec and server (scripts/fuzz-pcp.ts): no exception
// escapes, every answer decodes, bounds hold, every installed mapping is removed on close.
// GH_FUZZ_SEED=<n> replays another seed; GH_FUZZ_SCALE multiplies the count.
import t from 'tap';
import { pcpFuzz, pcpFuzzProblems } from '../../scripts/fuzz-pcp.js';

const seed = Number(process.env.GH_FUZZ_SEED ?? 0x9c9) >>> 0;
const count = Math.round(100_000 * Number(process.env.GH_FUZZ_SCALE ?? 1));

t.test(`PCP codec and server: ${count} inputs, seed ${seed}`, async (t) => {
  const started = Date.now();
  const r = await pcpFuzz({ count, seed });
  t.same(pcpFuzzProblems(r), [], 'no escaped exception, every answer decodes, bounds hold');
  t.equal(r.inputs, count);
  // The run reached the server's logic, not only the parser:
  for (const code of ['0', '2', '3', '4', '5', '6', '8', '11', '12', '13', 'NATPMP_UNSUPP_VERSION'])
    t.ok((r.results[code] ?? 0) > 0, `result ${code} answered (${r.results[code] ?? 0})`);
  t.ok(r.installs > 100, `mappings installed (${r.installs})`);
  t.comment(`${count} inputs in ${Date.now() - started} ms; results ${JSON.stringify(r.results)}`);
});
