// The final proof with the REAL gateway side: Gatehouse's TurnServer with
// GatewayInspector (src/gateway/inspector.ts) and its TurnEscrowExtension
// (src/gateway/escrow.ts), keys required with a hold policy. The compliant endpoint agent
// (werift) calls a plain werift peer through it: the gateway sends a signed KEY-REQUEST,
// the agent verifies it against the pinned gateway certificate, asks consent, sends
// WRITE-KEYS in a ChannelBind, the gateway verifies them against the held traffic
// (keys_verified) and releases it, so the data-channel message reaches the peer.
import t from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MemoryEventSink } from '../../src/events/eve.js';
import { loadOrCreateIdentity } from '../../src/store/identity.js';
import { PolicyEngine } from '../../src/policy/engine.js';
import { parseRuleFile } from '../../src/policy/rules-schema.js';
import { GatewayInspector } from '../../src/gateway/inspector.js';
import { GatewayTrust } from '../../src/endpoint/trust.js';
import { createEscrowPeerConnection, type ConsentRequest } from '../../src/endpoint/agent.js';
import { connectPeers, plainPeer, startTestTurn, until, withTimeout } from '../unit/endpoint/helpers.js';
import { assertNoSecrets, Secrets } from './helpers/secrets.js';

const RULES = 'keys:\n  required: true\n  deadline: 20s\n  unverified: hold\n  block_for: 5m\n';

/** Gatehouse's TurnServer with the real GatewayInspector and escrow extension, as serve wires them. */
async function startGateway() {
  const dir = mkdtempSync(join(tmpdir(), 'gh-endpoint-gw-'));
  const { identity } = await loadOrCreateIdentity(dir, { cert: null, key: null }, 'gatehouse-e2e');
  const events = new MemoryEventSink();
  const engine = new PolicyEngine([parseRuleFile(RULES, 'test.yaml')]);
  const inspector = new GatewayInspector({ policy: () => engine, identity, events });
  const { server, port } = await startTestTurn({
    relayPorts: [49000, 49999],
    extensions: [inspector.extension],
    flowHooks: inspector,
    events,
    dataDir: dir,
  });
  inspector.attach(server);
  return { dir, identity, events, server, port };
}

t.test('agent escrow against the real gateway extension: keys verified, traffic released', async (t) => {
  const { dir, identity, events, server, port } = await startGateway();
  const consents: ConsentRequest[] = [];
  const { pc, agent } = createEscrowPeerConnection({
    turnUrl: `turn:127.0.0.1:${port}`,
    username: 'alice',
    password: 'secret',
    trust: new GatewayTrust({ pinnedFingerprints: [identity.fingerprint.toString('hex')] }),
    gatewayCertificate: { pem: identity.certificatePem },
    consent: async (r) => {
      consents.push(r);
      return true;
    },
    pcConfig: { iceUseIpv6: false, iceInterfaceAddresses: { udp4: '127.0.0.1' } },
  });
  const peer = plainPeer();
  t.teardown(async () => {
    agent.close();
    await Promise.allSettled([pc.close(), peer.close()]);
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  const dc = pc.createDataChannel('chat');
  const got: string[] = [];
  peer.onDataChannel.subscribe((c) => c.onMessage.subscribe((m) => got.push(m.toString())));
  await withTimeout(connectPeers(pc, peer), 60_000, 'connect');
  await withTimeout(
    new Promise<void>((r) => (dc.readyState === 'open' ? r() : dc.stateChanged.subscribe((s) => s === 'open' && r()))),
    60_000,
    'data channel open',
  );
  dc.send('inspected hello');
  await until(() => got.length > 0, 60_000, 'message released to the peer');
  t.same(got, ['inspected hello'], 'message crossed the gateway');
  const types = events.events.map((e) => e.event_type);
  t.ok(types.includes('key_request'), 'gateway sent KEY-REQUEST');
  t.equal(consents.length, 1, 'consent asked once');
  t.equal(consents[0]!.gateway.fingerprint, identity.fingerprint.toString('hex'));
  t.equal(consents[0]!.wants.required, true, 'required flag from the policy');
  await until(() => events.events.some((e) => e.event_type === 'keys_verified'), 30_000, 'keys_verified');
  t.ok(types.includes('keys_received') || events.events.some((e) => e.event_type === 'keys_received'), 'gateway received the key set');
  t.notOk(
    events.events.some((e) => e.event_type === 'keys_invalid' || e.event_type === 'flow_blocked'),
    'no invalid keys, no block',
  );
  const rec = agent.records.find((r) => r.kind === 'write-keys');
  t.ok(rec, 'agent recorded the escrow');
  t.equal(rec!.method, 'ChannelBind', 'WRITE-KEYS in a ChannelBind');
  t.ok(
    rec!.statuses && rec!.statuses.length === 1 && (rec!.statuses[0] === 0 || rec!.statuses[0] === 1),
    `KEY-STATUS received/verified: ${JSON.stringify(rec!.statuses)}`,
  );
  const kr = events.events.find((e) => e.event_type === 'keys_received')!;
  t.equal((kr.gatehouse as { association?: string }).association, rec!.associations[0], 'gateway and agent name the same association');
  const secrets = new Secrets()
    .werift(pc, 'agent')
    .turnPassword('alice', 'secret', 'gatehouse.local', { word: true })
    .gatewayKey(identity.privateKey);
  t.ok(
    secrets.list.some((s) => s.kind === 'client_write_key'),
    'the agent’s key set is in the list',
  );
  assertNoSecrets(
    t,
    secrets,
    { texts: { 'gateway events': JSON.stringify(events.events) }, dirs: { DATA_DIR: dir } },
    'no key material or password in events or the data dir',
  );
});

t.test('declined consent against the real gateway: KEY-DECLINE blocks the required flow', async (t) => {
  const { dir, identity, events, server, port } = await startGateway();
  const { pc, agent } = createEscrowPeerConnection({
    turnUrl: `turn:127.0.0.1:${port}`,
    username: 'alice',
    password: 'secret',
    trust: new GatewayTrust({ pinnedFingerprints: [identity.fingerprint.toString('hex')] }),
    gatewayCertificate: { pem: identity.certificatePem },
    consent: async () => false,
    declineReason: 'not today',
    pcConfig: { iceUseIpv6: false, iceInterfaceAddresses: { udp4: '127.0.0.1' } },
  });
  const peer = plainPeer();
  t.teardown(async () => {
    agent.close();
    await Promise.allSettled([pc.close(), peer.close()]);
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  pc.createDataChannel('chat');
  // The handshake may or may not complete before the block; either way the decline must land.
  await withTimeout(connectPeers(pc, peer), 60_000, 'signalling').catch(() => undefined);
  await until(() => events.events.some((e) => e.event_type === 'keys_declined'), 60_000, 'keys_declined at the gateway');
  const d = events.events.find((e) => e.event_type === 'keys_declined')!;
  t.equal((d.gatehouse as { reason?: string }).reason, 'not today', 'reason carried');
  await until(() => events.events.some((e) => e.event_type === 'flow_blocked'), 30_000, 'flow blocked');
  t.ok(
    agent.records.some((r) => r.kind === 'decline' && r.method === 'ChannelBind'),
    'KEY-DECLINE sent in a ChannelBind',
  );
  t.notOk(
    events.events.some((e) => e.event_type === 'keys_received'),
    'no keys sent',
  );
});
