/**
 * `npm run bench`: every benchmark of the project in one command. Prints the machine,
 * markdown tables for the README, and writes everything as JSON to bench/out/results.json.
 *
 *   npm run bench                 full run (several minutes on 2 cores)
 *   npm run bench -- --quick      small counts, for trying the harness
 *   npm run bench -- --help       all options
 *
 * Benchmarks owned by others are loaded when their file exists (bench/srtp.ts exporting
 * runSrtpBench(), bench/dtls-decrypt.ts, bench/policy.ts) and skipped with a note when
 * it does not.
 * Figures are reported, never asserted: this is not part of `npm test`.
 */
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { machineInfo, type MachineInfo } from './lib/machine.js';
import { stopAll, liveCount } from './lib/procs.js';
import { fmt, markdownTable } from './lib/table.js';
import { runTurnRelayBench, type ServerName, type TurnBenchResult } from './turn-relay.js';

const HERE = dirname(fileURLToPath(import.meta.url));

const HELP = `Usage: npm run bench -- [options]

  --quick               small counts (a minute or so): for trying the harness
  --only LIST           comma-separated: turn,srtp,dtls,policy,inspect,escrow,pcp,core,keyagent,idle
                        (default: all)
  --servers LIST        TURN servers: gatehouse,coturn (default: both, in that order)
  --clients N           turnutils_uclient -m (default 50; quick 5)
  --messages N          turnutils_uclient -n, per client (default 2000; quick 300)
  --interval MS         turnutils_uclient -z (default 1)
  --sizes LIST          payload sizes, bytes (default 170,1100)
  --warmup N            -n of each server's warm-up run (default 500; quick 100)
  --repeat N            measured runs per case, median reported (default 1)
  --gatehouse-rules P   policy.rules for Gatehouse (default: a file with no rules,
                        keys not required)
  --out FILE            JSON output (default bench/out/results.json)
`;

interface Args {
  quick: boolean;
  only: Set<string>;
  out: string;
  turn: {
    servers?: ServerName[];
    clients?: number;
    messages?: number;
    intervalMs?: number;
    sizes?: number[];
    warmupMessages?: number;
    repeat?: number;
    gatehouseRules?: string | null;
  };
}

class UsageError extends Error {}

function parseArgs(argv: string[]): Args {
  const a: Args = {
    quick: false,
    only: new Set(['turn', 'srtp', 'dtls', 'policy', 'inspect', 'escrow', 'pcp', 'core', 'keyagent', 'idle']),
    out: join(HERE, 'out', 'results.json'),
    turn: {},
  };
  const posInt = (flag: string, v: string | undefined, min = 1): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new UsageError(`${flag} needs an integer >= ${min}, got ${v}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const f = argv[i]!;
    const v = (): string => {
      const x = argv[++i];
      if (x === undefined) throw new UsageError(`${f} needs a value`);
      return x;
    };
    switch (f) {
      case '--help':
      case '-h':
        process.stdout.write(HELP);
        process.exit(0);
      case '--quick':
        a.quick = true;
        break;
      case '--only':
        a.only = new Set(v().split(','));
        for (const x of a.only)
          if (!['turn', 'srtp', 'dtls', 'policy', 'inspect', 'escrow', 'pcp', 'core', 'keyagent', 'idle'].includes(x))
            throw new UsageError(`--only: unknown benchmark ${x}`);
        break;
      case '--servers': {
        const s = v().split(',');
        for (const x of s) if (x !== 'gatehouse' && x !== 'coturn') throw new UsageError(`--servers: unknown server ${x}`);
        a.turn.servers = s as ServerName[];
        break;
      }
      case '--clients':
        a.turn.clients = posInt(f, v());
        break;
      case '--messages':
        a.turn.messages = posInt(f, v());
        break;
      case '--interval':
        a.turn.intervalMs = posInt(f, v(), 0);
        break;
      case '--sizes':
        a.turn.sizes = v()
          .split(',')
          .map((x) => posInt('--sizes', x));
        break;
      case '--warmup':
        a.turn.warmupMessages = posInt(f, v());
        break;
      case '--repeat':
        a.turn.repeat = posInt(f, v());
        break;
      case '--gatehouse-rules':
        a.turn.gatehouseRules = v();
        break;
      case '--out':
        a.out = resolve(v());
        break;
      default:
        throw new UsageError(`unknown option ${f} (see --help)`);
    }
  }
  return a;
}

interface External {
  name: string;
  ran: boolean;
  note: string | null;
  result?: unknown;
  /** markdown rendering of the result, when it is a list of flat rows or has a `table` */
  table?: string;
}

interface ExternalSpec {
  key: string;
  name: string;
  file: string;
  /** export names tried first; else the first exported function named run* */
  fns: string[];
  /** the options object passed to it */
  opts: (quick: boolean) => Record<string, unknown>;
}

const EXTERNALS: ExternalSpec[] = [
  // bench/srtp.ts: runSrtpBench({ count, rounds }) → rows { profile, payload, oursNs, libsrtpNs, ratio }
  {
    key: 'srtp',
    name: 'SRTP unprotect: Gatehouse vs libsrtp2',
    file: 'srtp.ts',
    fns: ['runSrtpBench'],
    opts: (quick) => (quick ? { quick, count: 2000, rounds: 2 } : { quick }),
  },
  {
    key: 'dtls',
    name: 'DTLS record decryption',
    file: 'dtls-decrypt.ts',
    fns: ['runDtlsDecryptBench', 'runDtlsBench'],
    opts: (quick) => ({ quick }),
  },
  {
    key: 'policy',
    name: 'Policy evaluation per data-channel message',
    file: 'policy.ts',
    fns: ['runPolicyBench'],
    opts: (quick) => ({ quick }),
  },
  {
    key: 'inspect',
    name: 'Offline inspection: gatehouse inspect vs tshark',
    file: 'inspect.ts',
    fns: ['runInspectBench'],
    opts: (quick) => ({ quick }),
  },
  // bench/escrow.ts: runEscrowBench({ quick }) → { handshake, held, cpu, ratios, table }
  {
    key: 'escrow',
    name: 'Key escrow: keys verified, held-packet delay, inspected relay CPU',
    file: 'escrow.ts',
    fns: ['runEscrowBench'],
    opts: (quick) => ({ quick }),
  },
  // bench/pcp.ts: runPcpBench({ quick }) → { rate, cpu, held, table } (issue 10: PCP requests/s
  // vs miniupnpd, CPU per inspected packet NFQUEUE vs TURN, held-packet latency; needs root)
  {
    key: 'pcp',
    name: 'Firewall path: PCP requests/s, CPU per inspected packet (NFQUEUE vs TURN), held-packet latency',
    file: 'pcp.ts',
    fns: ['runPcpBench'],
    opts: (quick) => ({ quick }),
  },
  // bench/core.ts: runCoreBench({ quick }) → { joins, signal, notes, table } (issue 11: joins/s
  // through the director with the embedded FE and with two core-fe; signalling latency, 200 guests)
  {
    key: 'core',
    name: 'Conferencing core: joins/s through the director (one and two FEs), signalling latency with 200 participants',
    file: 'core.ts',
    fns: ['runCoreBench'],
    opts: (quick) => ({ quick }),
  },
  // bench/keyagent.ts: runKeyagentBench({ quick }) → { p50, p99, min, max, n } (issue 15: key-log
  // line written → keys_verified through the in-process gateway and the desktop key agent)
  {
    key: 'keyagent',
    name: 'Desktop key agent: key-log line written → keys_verified',
    file: 'keyagent.ts',
    fns: ['runKeyagentBench'],
    opts: (quick) => ({ quick }),
  },
  // bench/turn-idle.ts: runTurnIdleBench({ quick }) → { runs, notes, table } (issue 13: memory per
  // idle allocation, 10 000 held: gatehouse serve, a bare TurnServer and coturn)
  {
    key: 'idle',
    name: 'TURN memory per idle allocation: Gatehouse vs coturn',
    file: 'turn-idle.ts',
    fns: ['runTurnIdleBench'],
    opts: (quick) => ({ quick }),
  },
];

/** A list of flat objects as a markdown table (numbers: 2 decimals, NaN as n/a). */
function rowsTable(v: unknown): string | undefined {
  if (!Array.isArray(v) || !v.length || !v.every((r) => r && typeof r === 'object' && !Array.isArray(r))) return undefined;
  const rows = v as Array<Record<string, unknown>>;
  const headers = [...new Set(rows.flatMap((r) => Object.keys(r)))];
  const cell = (x: unknown): string =>
    typeof x === 'number'
      ? Number.isNaN(x)
        ? 'n/a'
        : Number.isInteger(x)
          ? String(x)
          : x.toFixed(2)
      : x === null || x === undefined
        ? ''
        : typeof x === 'object'
          ? JSON.stringify(x)
          : String(x);
  const numeric = headers.map((h) => rows.every((r) => typeof r[h] === 'number'));
  return markdownTable(
    headers,
    rows.map((r) => headers.map((h) => cell(r[h]))),
    numeric.map((n) => (n ? 'r' : 'l')),
  );
}

/** Loads a colleague's benchmark by file, if it is there, and runs its run* export. */
async function runExternal(spec: ExternalSpec, quick: boolean): Promise<External> {
  const { name, file } = spec;
  const path = join(HERE, file);
  if (!existsSync(path)) return { name, ran: false, note: `skipped: bench/${file} does not exist yet` };
  let mod: Record<string, unknown>;
  try {
    mod = (await import(pathToFileURL(path).href)) as Record<string, unknown>;
  } catch (e) {
    return { name, ran: false, note: `skipped: bench/${file} failed to load: ${(e as Error).message}` };
  }
  const fnName =
    spec.fns.find((n) => typeof mod[n] === 'function') ?? Object.keys(mod).find((k) => /^run/.test(k) && typeof mod[k] === 'function');
  if (!fnName) return { name, ran: false, note: `skipped: bench/${file} exports no ${spec.fns.join('/')} function` };
  process.stderr.write(`\n${name}: running ${fnName}() from bench/${file}\n`);
  try {
    const result = await (mod[fnName] as (o: Record<string, unknown>) => unknown)(spec.opts(quick));
    const own =
      result && typeof result === 'object' && typeof (result as { table?: unknown }).table === 'string'
        ? (result as { table: string }).table
        : undefined;
    return { name, ran: true, note: null, result: jsonSafe(result), table: own ?? rowsTable(result) };
  } catch (e) {
    return { name, ran: false, note: `failed: ${(e as Error).stack ?? (e as Error).message}` };
  }
}

function jsonSafe(v: unknown): unknown {
  try {
    return JSON.parse(JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? x.toString() : x))) as unknown;
  } catch {
    return String(v);
  }
}

function machineLine(m: MachineInfo): string {
  return `${m.cpu}, ${m.cores} cores, ${m.memGiB} GiB, ${m.kernel}, Node ${m.node}, coturn ${m.coturn ?? 'not installed'}; load average at start ${m.loadavg.join(' ')}`;
}

function turnNotes(t: TurnBenchResult, cores: number): string[] {
  const notes = [
    `Load (identical for both servers, one after the other, UDP over loopback): \`${t.load.uclientArgs}\`, i.e. ${t.load.clients} clients × ${t.load.messagesPerClient} ChannelData messages each, to one \`turnutils_peer\` that echoes them back through the relay. Each server first gets an unreported warm-up run (-n ${t.load.warmupMessages}).`,
    'Server CPU: user+system time of all threads of the server process (sum of /proc/PID/task/*/schedstat, ns), from "all allocations made" to the end of the load. µs/packet = that ÷ relayed packets.',
    'Relayed packets: client→peer plus peer→client packets the server handled; datagrams the kernel dropped on a full receive buffer at the server or the peer (/proc/net/udp) are not counted. Loss and RTT as turnutils_uclient reports them (RTT in whole ms per sample).',
  ];
  const all = t.servers.flatMap((s) => [s.warmup, ...s.allRuns]).filter((r): r is NonNullable<typeof r> => !!r);
  const worst = Math.max(0, ...all.flatMap((r) => r.loadavg));
  if (worst > cores) {
    notes.push(
      `The machine was busy: 1-minute load average up to ${fmt(worst, 1)} on ${cores} cores during the runs, so loss and RTT also reflect CPU contention from other processes.`,
    );
  }
  for (const s of t.servers) {
    if (!s.available) {
      notes.push(`${s.server}: not available: ${s.reason}`);
      continue;
    }
    if (s.idleCpuMsPerS !== null)
      notes.push(`${s.server}: idle CPU ${fmt(s.idleCpuMsPerS, 2)} ms per second (included in the figures above).`);
    for (const r of all.filter((x) => s.warmup === x || s.allRuns.includes(x))) {
      if (r.error) notes.push(`${s.server} ${r === s.warmup ? 'warm-up' : `${r.size} B`}: ${r.error}`);
      if (r.relayedMethod !== 'socket-drops' && r.sent > r.received)
        notes.push(
          `${s.server} ${r.size} B: relayed = sent + received (the kernel's drop counters could not be read), an upper bound under loss.`,
        );
    }
    if (s.reason) notes.push(`${s.server}: ${s.reason}`);
  }
  return notes;
}

async function main(): Promise<number> {
  const args = parseArgs(process.argv.slice(2));
  const machine = machineInfo();
  const started = new Date();
  const command = `npm run bench${process.argv.length > 2 ? ` -- ${process.argv.slice(2).join(' ')}` : ''}`;
  process.stdout.write(`# Gatehouse benchmarks\n\nMachine: ${machineLine(machine)}\nCommand: \`${command}\`\n`);

  const output: Record<string, unknown> = { generatedAt: started.toISOString(), command, quick: args.quick, machine };

  if (args.only.has('turn')) {
    process.stderr.write('\nTURN relay: Gatehouse vs coturn\n');
    process.stdout.write(`\n## TURN relay: CPU per relayed packet, Gatehouse vs coturn\n\n`);
    try {
      const t = await runTurnRelayBench({ quick: args.quick, ...args.turn });
      output.turn = t;
      process.stdout.write(`${t.table}\n\n`);
      for (const n of turnNotes(t, machine.cores)) process.stdout.write(`- ${n}\n`);
      for (const r of t.ratios) {
        process.stdout.write(
          `- ${r.size} B: Gatehouse/coturn CPU per packet = ${r.gatehouseOverCoturn === null ? 'n/a' : `${fmt(r.gatehouseOverCoturn, 2)}×`}\n`,
        );
      }
    } catch (e) {
      // e.g. coturn's tools are not installed: report, and go on with the other benchmarks.
      output.turn = { error: (e as Error).message };
      process.stdout.write(`failed: ${(e as Error).message}\n`);
      await stopAll();
    }
  }

  for (const spec of EXTERNALS) {
    if (!args.only.has(spec.key)) continue;
    const r = await runExternal(spec, args.quick);
    output[spec.key] = r;
    process.stdout.write(`\n## ${spec.name}\n\n`);
    if (!r.ran) process.stdout.write(`${r.note}\n`);
    else process.stdout.write(`${r.table ?? `(no table; the result is in ${args.out})`}\n`);
  }

  mkdirSync(dirname(args.out), { recursive: true });
  writeFileSync(args.out, `${JSON.stringify(output, null, 2)}\n`);
  process.stdout.write(`\nJSON: ${args.out}\n`);
  return 0;
}

let code = 1;
try {
  code = await main();
} catch (e) {
  process.stderr.write(`bench: ${e instanceof UsageError ? e.message : ((e as Error).stack ?? String(e))}\n`);
  code = e instanceof UsageError ? 2 : 1;
} finally {
  if (liveCount()) process.stderr.write(`bench: stopping ${liveCount()} leftover process(es)\n`);
  await stopAll();
}
process.exit(code);
