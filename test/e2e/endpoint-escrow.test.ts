// End-to-end: the compliant endpoint agent (werift + escrow) calls a plain werift peer
// through Gatehouse's TurnServer (in-process, UDP on 127.0.0.1, relay policy). The
// gateway side is the in-test stub extension of test/unit/endpoint/helpers.ts (signed
// KEY-REQUEST in ChannelBind/CreatePermission success responses; WRITE-KEYS decrypted with
// src/wire/escrow.ts). Asserts: WRITE-KEYS arrived in a ChannelBind for the peer, decrypts
// under the long-term key + NONCE, and the key set's client/server randoms and SRTP keys
// are the ones the two real werift DTLS endpoints negotiated.
import t from 'tap';
import { GatewayTrust } from '../../src/endpoint/trust.js';
import { createEscrowPeerConnection, type ConsentRequest } from '../../src/endpoint/agent.js';
import { associationId } from '../../src/wire/keyset.js';
import { Method } from '../../src/wire/stun.js';
import { connectPeers, makeGateway, plainPeer, startTestTurn, stubEscrowExtension, until, withTimeout } from '../unit/endpoint/helpers.js';

t.test('agent escrows werift DTLS keys in a ChannelBind through TurnServer', async (t) => {
  const gw = await makeGateway();
  const { ext, log } = stubEscrowExtension(gw, { deadline: 5, flags: 0x0003 });
  const { server, port } = await startTestTurn({ relayPorts: [46000, 46999], extensions: [ext] });
  const consents: ConsentRequest[] = [];
  const { pc, agent } = createEscrowPeerConnection({
    turnUrl: `turn:127.0.0.1:${port}`,
    username: 'alice',
    password: 'secret',
    trust: new GatewayTrust({ pinnedFingerprints: [gw.fingerprint.toString('hex')] }),
    gatewayCertificate: { pem: gw.certPem },
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
  });
  const dc = pc.createDataChannel('files');
  const got: string[] = [];
  peer.onDataChannel.subscribe((c) => c.onMessage.subscribe((m) => got.push(m.toString())));
  await withTimeout(connectPeers(pc, peer), 60_000, 'connect');
  await withTimeout(
    new Promise<void>((r) => (dc.readyState === 'open' ? r() : dc.stateChanged.subscribe((s) => s === 'open' && r()))),
    60_000,
    'data channel open',
  );
  dc.send('hello through the gateway');
  await until(() => log.writeKeys.length > 0, 30_000, 'WRITE-KEYS at the gateway');
  await until(() => got.length > 0, 30_000, 'message at the peer');
  t.same(got, ['hello through the gateway'], 'the call works through the relay');

  t.ok(log.keyRequests.length > 0, 'gateway emitted KEY-REQUEST');
  t.equal(consents.length, 1, 'consent asked once');
  t.equal(consents[0]!.gateway.fingerprint, gw.fingerprint.toString('hex'));
  t.same(consents[0]!.wants, { media: true, data: true, required: false });
  const wk = log.writeKeys[0]!;
  t.equal(wk.method, Method.ChannelBind, 'WRITE-KEYS carried in a ChannelBind');
  t.equal(wk.keySets.length, 1, 'one association');
  const ks = wk.keySets[0]!;
  // Compare with the real DTLS state of both ends (independent: werift's own objects).
  const a = (
    pc.dtlsTransports[0] as unknown as {
      dtls: {
        sessionType: number;
        cipher: { localRandom: { serialize(): Buffer }; remoteRandom: { serialize(): Buffer } };
        extractSessionKeys(k: number, s: number): { localKey: Buffer; remoteKey: Buffer };
      };
    }
  ).dtls;
  const local = Buffer.from(a.cipher.localRandom.serialize());
  const remote = Buffer.from(a.cipher.remoteRandom.serialize());
  const isClient = a.sessionType === 1;
  t.ok(ks.clientRandom.equals(isClient ? local : remote), 'client_random matches the association');
  t.ok(ks.serverRandom.equals(isClient ? remote : local), 'server_random matches the association');
  t.equal(ks.epoch, 1);
  t.ok(ks.srtpProfile !== undefined, 'SRTP profile included (use_srtp negotiated)');
  const sk = a.extractSessionKeys(ks.srtpClientMasterKey!.length, ks.srtpClientMasterSalt!.length);
  t.ok((isClient ? sk.localKey : sk.remoteKey).equals(ks.srtpClientMasterKey!), 'SRTP client master key matches werift');
  t.ok(
    wk.peers.every((p) => p.startsWith('127.0.0.1:')),
    'names the peer',
  );
  await until(() => agent.records.some((r) => r.kind === 'write-keys' && r.statuses !== null), 10_000, 'KEY-STATUS at the agent');
  const rec = agent.records.find((r) => r.kind === 'write-keys')!;
  t.same(rec.statuses, [0], 'KEY-STATUS received');
  t.same(rec.associations, [associationId(ks.clientRandom)]);
  t.equal(log.bad, 0, 'no invalid WRITE-KEYS');
});
