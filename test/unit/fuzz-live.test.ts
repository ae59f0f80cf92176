/**
 * Hostile input on a live server (issue 8): scripts/fuzz.ts drives a TurnServer with the
 * gateway floor (GatewayInspector as flow hooks and escrow extension, as startGateway
 * wires them) over real loopback UDP and TCP, as authenticated clients and as peers, with
 * 10^5 seeded mutations of valid packets (10^6: `npm run fuzz`). Properties: no uncaught
 * exception or unhandled rejection, a Binding answered after every batch, nothing
 * contained by the Supervisor, heapUsed after a full GC within a stated bound, and the
 * fuzz reached deep (relayed both ways, keys verified and refused, flows blocked).
 *
 * GH_FUZZ_SEED=<n> replays a seed; GH_FUZZ_LIVE_COUNT=<n> changes the count.
 */
import t from 'tap';
import { HEAP_GROWTH_BOUND, RSS_GROWTH_BOUND, formatReport, liveFuzz, liveFuzzProblems } from '../../scripts/fuzz.js';

const SEED = Number(process.env.GH_FUZZ_SEED ?? 0x5eed0008) >>> 0;
const COUNT = Number(process.env.GH_FUZZ_LIVE_COUNT ?? 100_000);
const MiB = 2 ** 20;

t.test(
  `live TURN + gateway fuzz, ${COUNT} inputs (seed ${SEED}; replay: GH_FUZZ_SEED=${SEED} or npm run fuzz -- --seed ${SEED})`,
  { timeout: 300_000 },
  async (t) => {
    const r = await liveFuzz({ count: COUNT, seed: SEED, log: (l) => t.comment(l) });
    for (const line of formatReport(r).split('\n')) t.comment(line);
    const replay = `(seed ${SEED}: GH_FUZZ_SEED=${SEED} npx tap test/unit/fuzz-live.test.ts)`;

    t.ok(r.inputs >= COUNT, `${r.inputs} mutated inputs sent`);
    if (COUNT >= 100_000) t.ok(r.inputs >= 100_000, 'at least 10^5 in npm test');
    t.same(r.uncaught, [], `no uncaughtException / unhandledRejection ${replay}`);
    t.equal(r.unanswered, 0, `a STUN Binding answered after each of ${r.batches} batches ${replay}`);
    if (r.supervised === null)
      t.comment('neither TurnServer nor GatewayInspector carries a Supervisor: contained-exception counters not checked');
    else t.same(r.supervised, {}, `no exception contained by the Supervisor (by call site) ${replay}`);

    if (r.gcAvailable) {
      const growth = r.memory.end.heapUsed - r.memory.warm.heapUsed;
      t.ok(
        growth <= HEAP_GROWTH_BOUND,
        `heapUsed after GC grew ${(growth / MiB).toFixed(1)} MiB from input ${r.memory.warm.inputs} to ${r.memory.end.inputs} (bound ${HEAP_GROWTH_BOUND / MiB} MiB)`,
      );
    } else t.comment('no GC could be forced: heapUsed not compared, only RSS with its generous bound');
    const rss = r.memory.end.rss - r.memory.start.rss;
    t.ok(rss <= RSS_GROWTH_BOUND, `RSS grew ${(rss / MiB).toFixed(1)} MiB (bound ${RSS_GROWTH_BOUND / MiB} MiB)`);
    t.same(liveFuzzProblems(r), [], 'no property broken');

    // The fuzz must have reached the data path and the escrow guard, or it proved little.
    t.ok(r.relayed.clientToPeer > 1000 && r.relayed.peerToClient > 1000, 'relayed both ways');
    t.ok((r.events['keys_verified'] ?? 0) > 0, 'valid WRITE-KEYS verified against live traffic');
    t.ok((r.events['keys_invalid'] ?? 0) + (r.events['keys_declined'] ?? 0) > 0, 'mutated WRITE-KEYS / KEY-DECLINE taken');
    t.ok((r.events['flow_blocked'] ?? 0) > 0, 'flows blocked (deadline, decline, policy) and re-made');
    t.ok((r.events['datachannel.message'] ?? 0) > 0, 'held data released and inspected');
    t.ok(r.setup.tcpReconnects > 0, 'TCP framing lies closed connections, and the server took new ones');
  },
);
