// The werift endpoint agent with `pcp` (src/endpoint/agent.ts → src/endpoint/pcp-client.ts)
// against Gatehouse's PCP server on loopback (src/pcp/server.ts, built-in EAP-TLS of RFC 7652,
// the gateway's escrow extension src/gateway/pcp-escrow.ts): during ICE gathering the agent
// MAPs its UDP host candidate and advertises the mapped address as a srflx candidate (raddr /
// rport = the host candidate); after the DTLS handshake with a plain werift peer, the DTLS
// association's keys reach the gateway over PCP (WRITE_KEYS opened by the real extension,
// client_random equal to the association's); close() deletes the mapping.
// The firewall backend records mappings (the kernel side is tested in the pcp-firewall tests).
import 'reflect-metadata';
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
import { createPcpEscrowPeerConnection } from '../../src/endpoint/agent.js';
import { dtlsStateFromWerift, type WeriftDtlsSocketLike } from '../../src/endpoint/keyset.js';
import type { KeySet } from '../../src/wire/keyset.js';
import { makePki } from './helpers/pcp-auth-pki.js';
import { requirePeer } from './helpers/require-peer.js';
import { gathered, onlyLoopback, plainPeer, until, withTimeout } from '../unit/endpoint/helpers.js';
import { networkInterfaces } from 'node:os';

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

t.test('agent with pcp: srflx candidate from the MAP, keys escrowed over PCP, mapping deleted on close', async (t) => {
  if (!requirePeer(t, 'openssl')) return;
  const pki = makePki();
  t.teardown(() => pki.cleanup());
  const { keyPem, certPem } = await createSelfSigned('gatehouse pcp agent e2e');
  const der = new X509Certificate(certPem).raw;
  const identity = {
    privateKey: createPrivateKey(keyPem),
    certificatePem: certPem,
    certificateDer: der,
    fingerprint: createHash('sha256').update(der).digest(),
  };
  const applied: KeySet[] = [];
  const host: PcpEscrowHost = {
    keysPolicy: () => ({ required: true, deadline: 5000, unverified: 'hold', block_for: 300_000, media: true, data: true }),
    applyKeySet: (_f: Flow, ks: KeySet) => {
      applied.push(
        Object.fromEntries(Object.entries(ks).map(([k, v]) => [k, Buffer.isBuffer(v) ? Buffer.from(v) : v])) as unknown as KeySet,
      );
      return 'verified';
    },
    applyDecline: () => undefined,
    keyRequested: () => undefined,
    isBlocked: () => false,
    writeKeysRejected: () => undefined,
  };
  const flows = new Map<string, PcpFlow>();
  const flowOf = (m: ServerMapping): PcpFlow => {
    let f = flows.get(m.id);
    if (!f) flows.set(m.id, (f = { mapping: m, peerAddress: '127.0.0.1' } as unknown as PcpFlow));
    return f;
  };
  const escrow = new PcpEscrowExtension(host, { flowsOfMapping: (m) => [flowOf(m)], findFlow: () => undefined }, identity);
  const fw = new RecordingBackend();
  let server: PcpServer | null = null;
  const auth = new PcpAuthServer({
    backend: new EapTlsServer({ ca: pki.ca, cert: pki.serverCert, key: pki.serverKey }),
    required: true,
    lifetime: 3600,
    epoch: () => (server ? Number((server as unknown as { epoch: { seconds(): number } }).epoch.seconds()) : 0),
  });
  // The agent's host candidates and the PCP server on the host's first external IPv4 address
  // (the PCP client's source address toward the server is then the host candidate's, RFC 6887 §8.1).
  const lan = Object.values(networkInterfaces())
    .flat()
    .find((a) => a && a.family === 'IPv4' && !a.internal)?.address;
  if (!lan) {
    t.fail('no external IPv4 address on this host');
    return;
  }
  const lanRe = lan.replace(/\./g, '\\.');
  server = new PcpServer({ listen: [`udp://${lan}:0`], externalAddress: '203.0.113.7', firewall: fw, auth, extension: escrow });
  escrow.setSender(server);
  await server.start();
  t.teardown(async () => {
    await server!.close();
    auth.close();
  });
  const addr = server.addresses()[0]!;

  const consents: unknown[] = [];
  const { pc, agent } = createPcpEscrowPeerConnection({
    trust: new GatewayTrust({ pinnedFingerprints: [identity.fingerprint.toString('hex')] }),
    gatewayCertificate: { pem: certPem },
    consent: async (c) => {
      consents.push(c);
      return true;
    },
    pcConfig: { iceUseIpv6: false, iceInterfaceAddresses: { udp4: lan } },
    pcp: {
      server: lan,
      port: addr.port,
      lifetime: 120,
      peer: true,
      eapTls: { cert: pki.clientCert, key: pki.clientKey, ca: pki.ca, identity: 'alice@example.com' },
    },
  });
  const pcpErrors: string[] = [];
  agent.on('pcpError', (e: Error) => pcpErrors.push(e.message));
  const peer = plainPeer();
  t.teardown(async () => {
    await pc.close().catch(() => undefined);
    await peer.close().catch(() => undefined);
  });

  const dc = pc.createDataChannel('chat');
  await pc.setLocalDescription(await pc.createOffer());
  await withTimeout(gathered(pc), 15_000, 'agent gathering');
  const sdp = pc.localDescription!.sdp;
  t.equal(fw.installed.length, 1, 'one MAP for the one UDP host candidate');
  const m = fw.installed[0]!;
  t.equal(m.user, 'alice@example.com', 'mapped under the EAP-TLS identity');
  const hostLine = sdp.split('\r\n').find((l) => l.startsWith('a=candidate:') && l.includes(' typ host') && l.includes(` ${lan} `));
  t.ok(hostLine, 'host candidate');
  const hostPort = Number(hostLine!.split(' ')[5]);
  t.equal(m.internal.port, hostPort, 'the MAP is for the host candidate port');
  const srflx = sdp.split('\r\n').find((l) => l.includes(' typ srflx'));
  t.ok(srflx, 'srflx candidate advertised');
  t.match(
    srflx!,
    new RegExp(` 203\\.0\\.113\\.7 ${m.external.port} typ srflx raddr ${lanRe} rport ${hostPort}`),
    'srflx = mapped address, base = host',
  );
  t.same(agent.pcpMappings[0], { internal: `${lan}:${hostPort}`, external: `203.0.113.7:${m.external.port}`, lifetime: 120 });

  t.notOk(/ typ host .*127\.0\.0\.1|127\.0\.0\.1 \d+ typ host/.test(sdp), 'agent host candidates only on the LAN address');
  await peer.setRemoteDescription({ type: 'offer', sdp });
  await peer.setLocalDescription(await peer.createAnswer());
  await withTimeout(gathered(peer), 10_000, 'peer gathering');
  await pc.setRemoteDescription({ type: 'answer', sdp: onlyLoopback(peer.localDescription!.sdp) });
  await withTimeout(
    new Promise<void>((r) => (dc.readyState === 'open' ? r() : dc.stateChanged.subscribe((s) => s === 'open' && r()))),
    15_000,
    'data channel open',
  );
  t.ok(consents.length >= 1, 'consent asked for the WRITE_KEYS_REQUEST of the MAP response');
  // peer: true → a PEER for the selected pair (RFC 6887 §12), the remote = the peer's candidate.
  await until(() => fw.installed.some((x) => x.opcode === 'peer'), 5000, 'PEER for the selected pair').catch((e: Error) => {
    const its = (pc as unknown as { iceTransports: Array<{ connection?: { nominated?: unknown } }> }).iceTransports;
    throw new Error(
      `${e.message}; pcpErrors=${JSON.stringify(pcpErrors)} nominated=${JSON.stringify(
        its.map((x) => {
          const n = x.connection?.nominated as { protocol?: { localCandidate?: object }; remoteCandidate?: object } | undefined;
          return [n?.protocol?.localCandidate, n?.remoteCandidate, typeof (n?.protocol as { localCandidate?: unknown })];
        }),
      )} maps=${JSON.stringify(agent.pcpMappings)} state=${pc.connectionState}`,
    );
  });
  const pm = fw.installed.find((x) => x.opcode === 'peer')!;
  const peerHost = peer.localDescription!.sdp.split('\r\n').find((l) => l.includes(' typ host') && l.includes(' 127.0.0.1 '))!;
  t.equal(pm.internal.port, hostPort, 'PEER from the host candidate port');
  t.same([pm.remote?.address, pm.remote?.port], ['127.0.0.1', Number(peerHost.split(' ')[5])], "PEER to the peer's candidate");
  t.equal(pm.external.port, m.external.port, 'PEER shares the MAP external port');
  await until(() => applied.length >= 1, 10_000, 'keys applied by the gateway');
  const sock = (pc as unknown as { dtlsTransports: Array<{ dtls?: WeriftDtlsSocketLike }> }).dtlsTransports[0]!.dtls!;
  const st = dtlsStateFromWerift(sock)!;
  t.ok(applied[0]!.clientRandom.equals(st.clientRandom), "the gateway got this DTLS association's keys over PCP");
  t.ok(applied[0]!.clientWriteKey && applied[0]!.clientWriteKey.length >= 16, 'with record keys');
  await until(() => agent.pcpRecords.some((r) => r.kind === 'write-keys' && r.result === 0), 5000, 'WRITE_KEYS answered');
  t.pass('WRITE_KEYS answered SUCCESS');

  const c0 = Date.now();
  await agent.closeAndDeleteMappings();
  t.ok(Date.now() - c0 < 5000, 'close answered promptly');
  await until(() => fw.removed.includes(m.id) && fw.removed.includes(pm.id), 5000, 'mappings removed');
  t.pass('close() deleted the MAP and the PEER (RFC 6887 §15)');
});
