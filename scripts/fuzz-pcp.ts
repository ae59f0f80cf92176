/**
 * Fuzzing of the PCP codec (src/wire/pcp.ts) and server (src/pcp/server.ts), in process:
 * a PcpServer with an in-memory FirewallBackend, a ManualClock and a tight bound on
 * mappings, fed through handle() (the socket path minus the socket) with
 *
 *  - mutated valid requests (MAP, PEER, ANNOUNCE, AUTHENTICATION, deletes, every base
 *    option, unknown mandatory and optional options, NAT-PMP requests): bit flips,
 *    interesting bytes, truncations, length lies at the option length offsets, splices,
 *    duplicated chunks, insertions (scripts/mutate.ts);
 *  - structured random requests (random opcode, lifetime, protocol, ports, nonce from a
 *    small pool so refreshes and nonce mismatches happen, options drawn from a pool),
 *    so the server's logic is reached and not only its parser;
 *  - random bytes.
 *
 * Between requests the server also sends unsolicited responses, blocks mappings and
 * announces (as the gateway does), and an escrow-like extension refuses or adds options.
 *
 * Properties: no exception escapes decodePcpRequest / decodePcpResponse / handle(), the
 * server's Supervisor catches nothing, every answer decodes as a PCP response (or is the
 * NAT-PMP Unsupported Version answer of §9), answers are at most 1100 bytes, and the
 * mapping table stays within its bound. The clock moves so expiry runs.
 *
 *   npm run fuzz -- --target pcp --count 1000000 --seed 1234   (the unit test runs 10^5)
 */
import { Mutator, prng } from './mutate.js';
import { ManualClock } from '../src/util/clock.js';
import { PcpServer } from '../src/pcp/server.js';
import type { FirewallBackend, PcpAddress, PcpMapping } from '../src/pcp/hooks.js';
import {
  Opcode,
  PCP_MAX_MESSAGE,
  decodePcpRequest,
  decodePcpResponse,
  encodePcpRequest,
  filterOption,
  preferFailureOption,
  thirdPartyOption,
  type PcpOption,
} from '../src/wire/pcp.js';

export interface PcpFuzzOptions {
  count: number;
  seed: number;
}

export interface PcpFuzzReport {
  inputs: number;
  answered: number;
  /** Answers by result code. */
  results: Record<string, number>;
  /** Exceptions that escaped, with the input in hex (first few). */
  escaped: string[];
  /** Answers that do not decode, or exceed 1100 bytes (first few, hex). */
  badAnswers: string[];
  supervised: Record<string, number>;
  maxMappings: number;
  installs: number;
  removes: number;
}

class MemoryBackend implements FirewallBackend {
  readonly name = 'memory';
  readonly available = true;
  installs = 0;
  removes = 0;
  live = new Set<string>();
  constructor(private readonly r: () => number) {}
  async install(m: PcpMapping): Promise<void> {
    if (this.r() < 0.02) throw new Error('fuzz: install fails');
    this.installs++;
    this.live.add(m.id);
  }
  async update(): Promise<void> {
    if (this.r() < 0.02) throw new Error('fuzz: update fails');
  }
  async remove(m: PcpMapping): Promise<void> {
    this.removes++;
    this.live.delete(m.id);
  }
  async close(): Promise<void> {}
}

const CLIENTS: PcpAddress[] = [
  { address: '192.168.1.10', port: 40000 },
  { address: '192.168.1.11', port: 40001 },
  { address: '2001:db8::10', port: 40002 },
];
const MAX_MAPPINGS = 300;

export async function pcpFuzz(o: PcpFuzzOptions): Promise<PcpFuzzReport> {
  const r = prng(o.seed);
  const m = new Mutator(r, { lengthOffsets: [26, 62, 66, 82, 86], maxLength: 1400 });
  const clock = new ManualClock();
  const fw = new MemoryBackend(r);
  const server = new PcpServer({
    externalAddress: '203.0.113.1',
    firewall: fw,
    clock,
    listen: [],
    maxMappings: MAX_MAPPINGS,
    maxMappingsPerClient: 200,
    maxFiltersPerMapping: 2,
    requestRatePerClient: 1_000_000,
    thirdPartyClients: ['192.168.1.10/32'],
    allowAllPorts: true,
    minLifetime: 1,
    maxLifetime: 600,
    portMin: 5000,
    portMax: 5400,
    // An extension like the gateway's escrow: sometimes refuses, sometimes adds an option.
    extension: {
      onRequest: () => {
        const x = r();
        if (x < 0.03) return { result: 2 };
        if (x < 0.06) return { options: [{ code: 200, data: Buffer.alloc(1 + Math.floor(r() * 40)) }], commit: () => undefined };
        return undefined;
      },
    },
  });
  const nonces = [Buffer.alloc(12, 1), Buffer.alloc(12, 2), Buffer.alloc(12, 3)];
  const optionPool = (v6: boolean): PcpOption[] => [
    preferFailureOption(),
    thirdPartyOption(v6 ? '2001:db8::99' : '192.168.1.99'),
    filterOption({ prefixLength: v6 ? 64 : 120, port: m.int(3) * 443, address: v6 ? '2001:db8:1::' : '198.51.100.0' }),
    filterOption({ prefixLength: 128, port: 0, address: v6 ? `2001:db8:3::${1 + m.int(9)}` : `198.51.101.${m.int(9)}` }),
    filterOption({ prefixLength: 128, port: 0, address: v6 ? `2001:db8:3::${1 + m.int(9)}` : `198.51.101.${m.int(9)}` }),
    filterOption({ prefixLength: 0, port: 0, address: '::' }),
    { code: 5, data: Buffer.alloc(8) },
    { code: 99, data: Buffer.alloc(4) },
    { code: 200, data: m.bytes(m.int(9)) },
    { code: 1, data: Buffer.alloc(4) },
  ];
  const structured = (client: PcpAddress): Buffer => {
    const v6 = client.address.includes(':');
    const opcode = m.pick([Opcode.MAP, Opcode.MAP, Opcode.PEER, Opcode.ANNOUNCE, Opcode.AUTHENTICATION, 7]);
    const protocol = m.pick([0, 6, 17, 17, 132, 47]);
    const common = {
      nonce: m.pick(nonces),
      protocol,
      internalPort: m.pick([0, 5000, 5001, 5002, 6000 + m.int(50)]),
      externalPort: m.pick([0, 0, 5000, 5001, 5399, 80, m.int(65536)]),
      externalAddress: m.pick(['0.0.0.0', '::', '203.0.113.1', '198.51.100.1', v6 ? client.address : '0.0.0.0']),
    };
    const options: PcpOption[] = [];
    const pool = optionPool(v6);
    for (let i = m.int(4); i > 0; i--) options.push(m.pick(pool));
    return encodePcpRequest({
      opcode,
      lifetime: m.pick([0, 0, 1, 120, 3600, 0xffffffff, m.int(1000)]),
      clientAddress: m.chance(0.95) ? client.address : '10.1.1.1',
      map: opcode === Opcode.MAP ? common : undefined,
      peer:
        opcode === Opcode.PEER
          ? {
              ...common,
              remotePort: m.pick([0, 3478, 443]),
              remoteAddress: m.pick(v6 ? ['2001:db8:2::1', '::', '198.51.100.9'] : ['198.51.100.9', '0.0.0.0', '2001:db8::1']),
            }
          : undefined,
      opcodeData: opcode === Opcode.AUTHENTICATION ? Buffer.alloc(8) : opcode === 7 ? Buffer.alloc(m.int(3) * 4) : undefined,
      options,
    });
  };
  const corpus: Buffer[] = [];
  for (let i = 0; i < 40; i++) corpus.push(structured(CLIENTS[i % CLIENTS.length]!));
  corpus.push(Buffer.from([0, 0]), Buffer.from('000100001388138800001c20', 'hex'));

  const rep: PcpFuzzReport = {
    inputs: 0,
    answered: 0,
    results: {},
    escaped: [],
    badAnswers: [],
    supervised: {},
    maxMappings: 0,
    installs: 0,
    removes: 0,
  };
  for (let i = 0; i < o.count; i++) {
    const client = m.pick(CLIENTS);
    const kind = m.int(10);
    const input = kind < 5 ? m.mutate(m.pick(corpus), corpus) : kind < 9 ? structured(client) : m.bytes(m.int(64));
    rep.inputs++;
    let answers: Buffer[];
    try {
      decodePcpRequest(input);
      decodePcpResponse(input);
      answers = await server.handle(input, client);
    } catch (err) {
      if (rep.escaped.length < 5) rep.escaped.push(`${(err as Error).stack ?? err} input=${input.toString('hex')}`);
      else rep.escaped.push('');
      continue;
    }
    for (const a of answers) {
      rep.answered++;
      const natPmp = a[0] === 0 && a.length >= 8 && a[1]! >= 128 && a.readUInt16BE(2) === 1;
      const d = natPmp ? null : decodePcpResponse(a);
      if (a.length > PCP_MAX_MESSAGE || (!natPmp && !d?.ok)) {
        if (rep.badAnswers.length < 5) rep.badAnswers.push(`answer=${a.toString('hex')} input=${input.toString('hex')}`);
        else rep.badAnswers.push('');
        continue;
      }
      const code = natPmp ? 'NATPMP_UNSUPP_VERSION' : String(d!.ok ? d!.value.result : -1);
      rep.results[code] = (rep.results[code] ?? 0) + 1;
    }
    rep.maxMappings = Math.max(rep.maxMappings, server.mappings().length);
    // Server-initiated actions between requests: unsolicited responses, blocks, ANNOUNCE.
    if (m.chance(0.01)) {
      const live = server.mappings();
      if (live.length) {
        const victim = m.pick(live);
        if (m.chance(0.5)) server.sendUnsolicited(victim, [{ code: 201, data: m.bytes(m.int(16)) }]);
        else await server.deleteMapping(victim, m.pick(['blocked', 'deleted'] as const));
      }
      if (m.chance(0.1)) server.announce();
    }
    if (i % 1000 === 999) clock.advance(m.int(120_000));
  }
  await server.close();
  rep.supervised = Object.fromEntries(server.supervisor.failures);
  rep.installs = fw.installs;
  rep.removes = fw.removes;
  return rep;
}

/** The properties of a run; empty when it held. */
export function pcpFuzzProblems(r: PcpFuzzReport): string[] {
  const p: string[] = [];
  if (r.escaped.length) p.push(`${r.escaped.length} exceptions escaped: ${r.escaped.filter(Boolean).join('\n')}`);
  if (r.badAnswers.length) p.push(`${r.badAnswers.length} answers that do not decode: ${r.badAnswers.filter(Boolean).join('\n')}`);
  if (Object.keys(r.supervised).length) p.push(`exceptions contained by the Supervisor: ${JSON.stringify(r.supervised)}`);
  if (r.maxMappings > MAX_MAPPINGS) p.push(`mapping table grew to ${r.maxMappings} (bound ${MAX_MAPPINGS})`);
  if (r.installs !== r.removes) p.push(`installs ${r.installs} != removes ${r.removes} after close()`);
  return p;
}
