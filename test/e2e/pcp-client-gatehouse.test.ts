// The endpoint PCP client (src/endpoint/pcp-client.ts) against Gatehouse's own PCP server
// over UDP on loopback: src/pcp/server.ts with RFC 7652 authentication (the built-in EAP-TLS
// server, openssl-made PKI) and the gateway's key escrow extension (src/gateway/pcp-escrow.ts)
// signing WRITE_KEYS_REQUEST with a gateway identity. Proves, with the real gateway code on
// the other side:
//  - EAP-TLS through PcpClient.authenticate, then tagged MAP requests that succeed;
//  - WRITE_KEYS_REQUEST in the solicited MAP response → consent → WRITE_KEYS that the
//    gateway opens (the key set it applies equals the association's);
//  - a new flow on the mapping → the server's unsolicited MAP response (RFC 6887 §14.2)
//    with WRITE_KEYS_REQUEST → WRITE_KEYS of a new association only;
//  - consent = false → KEY_DECLINE applied by the gateway;
//  - an unauthenticated client escrows nothing;
//  - delete (lifetime 0) removes the mapping from the firewall backend.
// The firewall backend records mappings (the kernel side is tested in the pcp-firewall tests).
import t from 'tap';
import { X509Certificate, createHash, createPrivateKey } from 'node:crypto';
import { PcpServer } from '../../src/pcp/server.js';
import { PcpAuthServer } from '../../src/pcp/auth/pa-server.js';
import { EapTlsServer } from '../../src/pcp/auth/eap-tls-server.js';
import type { FirewallBackend, PcpMapping as ServerMapping } from '../../src/pcp/hooks.js';
import { PcpEscrowExtension, type PcpEscrowHost } from '../../src/gateway/pcp-escrow.js';
import type { PcpFlow } from '../../src/gateway/pcp-path.js';
import type { Flow } from '../../src/turn/flow.js';
import { createSelfSigned } from '../../src/store/identity.js';
import { GatewayTrust } from '../../src/endpoint/trust.js';
import { PcpClient, type PcpEscrowAssociation } from '../../src/endpoint/pcp-client.js';
import { encodeKeySet, type KeySet } from '../../src/wire/keyset.js';
import { Result } from '../../src/wire/pcp.js';
import { makePki } from './helpers/pcp-auth-pki.js';
import { requirePeer } from './helpers/require-peer.js';

class RecordingBackend implements FirewallBackend {
  readonly name = 'recording';
  readonly available = true;
  installed: ServerMapping[] = [];
  removed: string[] = [];
  async install(m: ServerMapping): Promise<void> {
    this.installed.push(m);
  }
  async update(): Promise<void> {}
  async remove(m: ServerMapping): Promise<void> {
    this.removed.push(m.id);
  }
  async close(): Promise<void> {}
}

function keySet(n: number): KeySet {
  return {
    clientRandom: Buffer.alloc(32, n),
    serverRandom: Buffer.alloc(32, n + 100),
    cipherSuite: 0xc02b,
    epoch: 1,
    clientWriteKey: Buffer.alloc(16, 0x11 + n),
    serverWriteKey: Buffer.alloc(16, 0x22 + n),
    clientWriteIv: Buffer.alloc(4, 0x33),
    serverWriteIv: Buffer.alloc(4, 0x44),
  };
}
const assoc = (n: number): PcpEscrowAssociation => ({ id: `a${n}`, keySet: () => encodeKeySet(keySet(n)) });

async function until(cond: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out: ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

t.test('PcpClient ↔ Gatehouse PCP server: EAP-TLS, WRITE_KEYS, unsolicited WRITE_KEYS_REQUEST, KEY_DECLINE, delete', async (t) => {
  if (!requirePeer(t, 'openssl')) return;
  const pki = makePki();
  t.teardown(() => pki.cleanup());
  const { keyPem, certPem } = await createSelfSigned('gatehouse pcp e2e gateway');
  const der = new X509Certificate(certPem).raw;
  const identity = {
    privateKey: createPrivateKey(keyPem),
    certificatePem: certPem,
    certificateDer: der,
    fingerprint: createHash('sha256').update(der).digest(),
  };
  const applied: { mapping: string; ks: KeySet }[] = [];
  const declined: { mapping: string; reason: string }[] = [];
  const rejected: string[] = [];
  const host: PcpEscrowHost = {
    keysPolicy: () => ({ required: true, deadline: 5000, unverified: 'hold', block_for: 300_000, media: false, data: true }),
    applyKeySet: (f: Flow, ks: KeySet) => {
      // The extension wipes its copy after applying (key-escrow.md §5.5): keep our own.
      const copy = Object.fromEntries(
        Object.entries(ks).map(([k, v]) => [k, Buffer.isBuffer(v) ? Buffer.from(v) : v]),
      ) as unknown as KeySet;
      applied.push({ mapping: (f as PcpFlow).mapping.id, ks: copy });
      return 'verified';
    },
    applyDecline: (f: Flow, reason: string) => void declined.push({ mapping: (f as PcpFlow).mapping.id, reason }),
    keyRequested: () => undefined,
    isBlocked: () => false,
    writeKeysRejected: (_m, reason) => void rejected.push(reason),
  };
  // One fake flow per mapping (a remote peer seen through the pinhole).
  const flows = new Map<string, PcpFlow>();
  const flowOf = (m: ServerMapping): PcpFlow => {
    let f = flows.get(m.id);
    if (!f) flows.set(m.id, (f = { mapping: m, peerAddress: '198.51.100.20' } as unknown as PcpFlow));
    return f;
  };
  const escrow = new PcpEscrowExtension(host, { flowsOfMapping: (m) => [flowOf(m)], findFlow: () => undefined }, identity);
  const fw = new RecordingBackend();
  let server: PcpServer | null = null;
  const auth = new PcpAuthServer({
    backend: new EapTlsServer({ ca: pki.ca, cert: pki.serverCert, key: pki.serverKey }),
    required: false,
    lifetime: 3600,
    epoch: () => (server ? Number((server as unknown as { epoch: { seconds(): number } }).epoch.seconds()) : 0),
  });
  server = new PcpServer({ listen: ['udp://127.0.0.1:0'], externalAddress: '203.0.113.7', firewall: fw, auth, extension: escrow });
  escrow.setSender(server);
  await server.start();
  t.teardown(async () => {
    await server!.close();
    auth.close();
  });
  const addr = server.addresses()[0]!;
  const trust = new GatewayTrust({ pinnedFingerprints: [identity.fingerprint.toString('hex')] });

  const mkClient = (consent: boolean, assocs: PcpEscrowAssociation[]): PcpClient =>
    new PcpClient({
      server: '127.0.0.1',
      port: addr.port,
      clientAddress: '127.0.0.1',
      escrow: {
        gateway: async () => trust.evaluate(certPem),
        consent: () => consent,
        associations: () => assocs,
        declineReason: 'e2e says no',
      },
    });

  t.test('consent yes: keys escrowed and opened by the gateway', async (t) => {
    const assocs = [assoc(1)];
    const c = mkClient(true, assocs);
    await c.start();
    t.teardown(() => c.close());
    await c.authenticate({ cert: pki.clientCert, key: pki.clientKey, ca: pki.ca, servername: 'gw.test', identity: 'alice@example.com' });
    t.ok(c.authenticated, 'SA established over the client socket');
    const m = c.map({ protocol: 17, internalPort: 40100, lifetime: 120 });
    const info = await m.ready;
    t.equal(info.externalAddress, '203.0.113.7', 'Gatehouse external address');
    t.ok(info.externalPort > 0);
    t.equal(fw.installed.at(-1)!.user, 'alice@example.com', 'mapping made under the authenticated identity');
    await until(() => applied.length >= 1, 5000, 'gateway applied the key set');
    t.same(applied[0]!.ks, keySet(1), 'the gateway opened WRITE_KEYS to the association key set');
    t.same(rejected, [], 'no WRITE_KEYS refused');
    t.equal(c.records.at(-1)!.result, Result.SUCCESS, 'the WRITE_KEYS request was answered SUCCESS');

    // A new association, then a new flow: the server's unsolicited response asks again.
    assocs.push(assoc(2));
    const flowsBefore = applied.length;
    let unsolicited = 0;
    m.on('refreshed', (_i: unknown, solicited: boolean) => void (solicited ? 0 : unsolicited++));
    escrow.flowCreated(flowOf(fw.installed.at(-1)!));
    await until(() => applied.length > flowsBefore && applied.some((a) => a.ks.clientRandom[0] === 2), 5000, 'new association escrowed');
    t.ok(unsolicited >= 1, 'an unsolicited MAP response (RFC 6887 §14.2) carried the request');
    const sentIds = c.records.filter((r) => r.kind === 'write-keys').flatMap((r) => r.associations);
    t.same(sentIds, ['a1', 'a2'], 'each association sent once');

    const removedBefore = fw.removed.length;
    await m.delete();
    t.equal(m.deleteResult, Result.SUCCESS, 'delete answered SUCCESS');
    await until(() => fw.removed.length > removedBefore, 3000, 'firewall rule removed');
    t.pass('mapping removed from the firewall backend');
  });

  t.test('consent no: KEY_DECLINE reaches the gateway, no keys', async (t) => {
    const c = mkClient(false, [assoc(3)]);
    await c.start();
    t.teardown(() => c.close());
    await c.authenticate({ cert: pki.clientCert, key: pki.clientKey, ca: pki.ca });
    const before = applied.length;
    const m = c.map({ protocol: 17, internalPort: 40101, lifetime: 120 });
    await m.ready;
    await until(() => declined.length >= 1, 5000, 'decline applied');
    t.equal(declined.at(-1)!.reason, 'e2e says no');
    t.equal(applied.length, before, 'no key set');
  });

  t.test('SA lifetime over: the client authenticates again and its renewal succeeds', async (t) => {
    let srv: PcpServer | null = null;
    const shortAuth = new PcpAuthServer({
      backend: new EapTlsServer({ ca: pki.ca, cert: pki.serverCert, key: pki.serverKey }),
      required: true,
      lifetime: 2,
      epoch: () => (srv ? Number((srv as unknown as { epoch: { seconds(): number } }).epoch.seconds()) : 0),
    });
    srv = new PcpServer({
      listen: ['udp://127.0.0.1:0'],
      externalAddress: '203.0.113.7',
      firewall: new RecordingBackend(),
      auth: shortAuth,
      minLifetime: 2,
    });
    await srv.start();
    t.teardown(async () => {
      await srv!.close();
      shortAuth.close();
    });
    const c = new PcpClient({ server: '127.0.0.1', port: srv.addresses()[0]!.port, clientAddress: '127.0.0.1' });
    await c.start();
    t.teardown(() => c.close());
    let auths = 0;
    c.on('authenticated', () => auths++);
    await c.authenticate({ cert: pki.clientCert, key: pki.clientKey, ca: pki.ca });
    const m = c.map({ protocol: 17, internalPort: 40103, lifetime: 6 });
    const first = await m.ready;
    // The renewal at 3..3.75 s finds the 2 s SA over: re-authentication, then the renewal with the new SA.
    const refreshed = await new Promise<{ externalPort: number }>((res, rej) => {
      const timer = setTimeout(() => rej(new Error('no renewal')), 8000);
      m.once('refreshed', (i: { externalPort: number }) => {
        clearTimeout(timer);
        res(i);
      });
    });
    t.equal(auths, 2, 'authenticated again');
    t.equal(refreshed.externalPort, first.externalPort, 'same mapping renewed under the new SA');
    t.ok((c.dropped.get('auth') ?? 0) >= 1, 'the untagged answer to the renewal under the stale SA was dropped');
  });

  t.test('no SA: the client escrows nothing', async (t) => {
    const c = mkClient(true, [assoc(4)]);
    await c.start();
    t.teardown(() => c.close());
    const untrusted: string[] = [];
    c.on('untrusted', (u: { reason: string }) => untrusted.push(u.reason));
    const before = applied.length;
    const m = c.map({ protocol: 17, internalPort: 40102, lifetime: 120 });
    await m.ready;
    await until(() => untrusted.length > 0, 3000, 'refusal reported');
    t.match(untrusted[0]!, /security association/);
    await new Promise((r) => setTimeout(r, 300));
    t.equal(applied.length, before, 'no keys reached the gateway');
    t.equal(c.records.length, 0, 'nothing sent');
  });
});
