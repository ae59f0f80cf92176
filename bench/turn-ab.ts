/**
 * Alternating A/B rounds of bench/turn-relay.ts for a shared, noisy machine: each round
 * runs Gatehouse and coturn one after the other (the order flips every round), and the
 * figure kept is the per-round ratio Gatehouse/coturn, whose median is reported. A
 * variant (`--variant fast_path=auto` etc.) adds a third server run per round: Gatehouse
 * with those `turn:` config lines.
 *
 *   npx tsx bench/turn-ab.ts [--rounds 3] [--clients 50] [--messages 1000] [--sizes 170,1100]
 *                            [--variant 'fast_path: auto'] [--prof DIR]
 *
 * --old DIR adds a run per round of another checkout's bin/gatehouse.js (an earlier build), as the variant.
 * --bare runs bench/turn-bare.ts (a TurnServer without the gateway's hooks) for every Gatehouse run.
 * --prof DIR runs the (first) Gatehouse of every round under `node --cpu-prof`, profiles in DIR.
 */
import { spawnSync } from 'node:child_process';
import { loadavg } from 'node:os';
import { runTurnRelayBench, type TurnBenchOptions } from './turn-relay.js';

function arg(name: string, dflt: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1]! : dflt;
}

const rounds = Number(arg('rounds', '3'));
const clients = Number(arg('clients', '50'));
const messages = Number(arg('messages', '1000'));
const sizes = arg('sizes', '170,1100').split(',').map(Number);
const variant = arg('variant', '') || (process.argv.includes('--old') ? 'earlier build' : '');
const prof = arg('prof', '');
const old = arg('old', '');
const version = spawnSync('turnserver', ['--version'], { encoding: 'utf8' }).stdout?.trim().split('\n')[0] ?? null;

type Key = 'gatehouse' | 'variant' | 'coturn';
const per: Record<Key, number[][]> = { gatehouse: [], variant: [], coturn: [] };
const log = (l: string): void => void process.stderr.write(`${l}\n`);

async function one(which: Key): Promise<number[]> {
  const o: Partial<TurnBenchOptions> = {
    clients,
    messages,
    sizes,
    warmupMessages: 200,
    idleMs: 500,
    repeat: 1,
    servers: [which === 'coturn' ? 'coturn' : 'gatehouse'],
    log: () => {},
    gatehouseBare: process.argv.includes('--bare'),
  };
  if (which === 'variant' && old) o.gatehouseBin = `${old}/bin/gatehouse.js`;
  else if (which === 'variant') o.gatehouseTurnConfig = variant.split(';').map((s) => s.trim());
  if (which !== 'coturn' && prof) o.gatehouseNodeArgs = ['--cpu-prof', `--cpu-prof-dir=${prof}`];
  const r = await runTurnRelayBench(o, version);
  const srv = r.servers[0]!;
  return sizes.map((size) => {
    const c = srv.cases.find((x) => x.size === size);
    if (!c || c.error) log(`${which} ${size} B: ${c?.error ?? srv.reason ?? 'no run'}`);
    else log(`${which} ${size} B: ${c.usPerPacket!.toFixed(2)} µs/packet, loss ${c.lossPct}%, relayed ${c.relayed}`);
    return c && !c.error ? c.usPerPacket! : NaN;
  });
}

const med = (xs: number[]): number => {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  return s.length ? s[Math.floor((s.length - 1) / 2)]! : NaN;
};

for (let r = 0; r < rounds; r++) {
  const order: Key[] = variant ? ['gatehouse', 'variant', 'coturn'] : ['gatehouse', 'coturn'];
  if (r % 2) order.reverse();
  log(`round ${r + 1}/${rounds} (${order.join(' → ')}), load average ${loadavg()[0]!.toFixed(2)}`);
  for (const k of order) per[k].push(await one(k));
}

const lines: string[] = [];
lines.push(
  `${clients} clients × ${messages} messages, ${rounds} alternating rounds, median of per-round figures` +
    (process.argv.includes('--bare') ? ' (Gatehouse: bare TurnServer, bench/turn-bare.ts)' : ' (Gatehouse: gatehouse serve)'),
);
lines.push('| payload | Gatehouse µs | ' + (variant ? `Gatehouse (${variant}) µs | ` : '') + 'coturn µs | Gatehouse/coturn' + (variant ? ' | variant/coturn' : '') + ' |');
sizes.forEach((size, i) => {
  const g = per.gatehouse.map((x) => x[i]!);
  const c = per.coturn.map((x) => x[i]!);
  const v = per.variant.map((x) => x[i]!);
  const ratio = med(g.map((x, k) => x / c[k]!));
  const vr = med(v.map((x, k) => x / c[k]!));
  lines.push(
    `| ${size} B | ${med(g).toFixed(2)} | ` +
      (variant ? `${med(v).toFixed(2)} | ` : '') +
      `${med(c).toFixed(2)} | ${ratio.toFixed(2)}×` +
      (variant ? ` | ${vr.toFixed(2)}×` : '') +
      ' |',
  );
});
process.stdout.write(lines.join('\n') + '\n');
