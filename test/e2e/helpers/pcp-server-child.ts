// A PcpServer in its own process (run inside a network namespace by the pcp-server-*
// e2e tests) with a recording FirewallBackend: every backend call and every EVE event is
// one JSON line on stdout, so the test asserts what the server saw and did.
//
//   node --import tsx pcp-server-child.ts '<json options>'
//   options: PcpServerOptions as JSON (listen, externalAddress, minLifetime, thirdPartyClients, ...)
// stdout: {"kind":"listening","addresses":[...]} then {"kind":"install"|"update"|"remove",
// "mapping":{...}} and {"kind":"event","event":{...}}; SIGTERM closes (mappings removed).
import { PcpServer, type PcpServerOptions } from '../../../src/pcp/server.js';
import type { FirewallBackend, PcpMapping } from '../../../src/pcp/hooks.js';
import type { EveEvent } from '../../../src/events/eve.js';
import { NftablesBackend } from '../../../src/pcp/firewall/nftables.js';

const opts = JSON.parse(process.argv[2] ?? '{}') as {
  listen: string[];
  externalAddress: string;
  minLifetime?: number;
  maxLifetime?: number;
  /** Also make every mapping real with the nftables backend (NAT + filter rules, no queue) in this namespace. */
  nftables?: boolean;
};
const out = (o: unknown): void => void process.stdout.write(JSON.stringify(o) + '\n');
const view = (m: PcpMapping) => ({
  id: m.id,
  opcode: m.opcode,
  client: m.client,
  internal: m.internal,
  protocol: m.protocol,
  external: m.external,
  remote: m.remote,
  filters: m.filters,
  expiresAt: m.expiresAt,
});

const real = opts.nftables ? await NftablesBackend.create({ queue: null }) : null;
if (real && !real.available) {
  out({ kind: 'error', reason: real.reason });
  process.exit(1);
}
const backend: FirewallBackend = {
  name: 'recording',
  available: true,
  async install(m) {
    await real?.install(m);
    out({ kind: 'install', mapping: view(m) });
  },
  async update(m) {
    await real?.update(m);
    out({ kind: 'update', mapping: view(m) });
  },
  async remove(m) {
    await real?.remove(m);
    out({ kind: 'remove', mapping: view(m) });
  },
  async close() {
    await real?.close();
  },
};

const server = new PcpServer({
  ...opts,
  firewall: backend,
  events: { emit: (e: EveEvent) => out({ kind: 'event', event: e }), close() {} },
});
await server.start();
out({ kind: 'listening', addresses: server.addresses() });
process.on('SIGTERM', () => {
  server.close().then(
    () => {
      out({ kind: 'closed', supervised: Object.fromEntries(server.supervisor.failures), stats: server.stats.snapshot() });
      process.exit(0);
    },
    () => process.exit(1),
  );
});
