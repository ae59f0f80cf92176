// A new DTLS handshake on the same call (new randoms: key-escrow.md §1 "association")
// makes the agent send the new keys in another ChannelBind, against TurnServer with the
// stub gateway extension. werift 0.24.4 cannot complete a second handshake on a connected
// DtlsSocket (its client's new ClientHello is never answered: "over retransmitCount"), so
// this unit test simulates the new association: it gives the agent's DtlsSocket new
// client/server randoms, which is exactly what a new handshake changes for the agent.
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { GatewayTrust } from '../../../src/endpoint/trust.js';
import { associationId } from '../../../src/wire/keyset.js';
import { Method } from '../../../src/wire/stun.js';
import { escrowCall, makeGateway, until } from './helpers.js';

t.test('new handshake → new WRITE-KEYS', async (t) => {
  const gw = await makeGateway();
  const call = await escrowCall(gw, {
    trust: new GatewayTrust({ pinnedFingerprints: [gw.fingerprint.toString('hex')] }),
    gatewayCertificate: { pem: gw.certPem },
    consent: async () => true,
  });
  t.teardown(() => call.close());
  await call.exchange();
  await until(() => call.log.writeKeys.length === 1, 30_000, 'first WRITE-KEYS');
  const first = call.log.writeKeys[0]!.keySets[0]!;
  type Rnd = { serialize(): Buffer };
  type Sock = { sessionType: number; cipher: { localRandom: Rnd; remoteRandom: Rnd } };
  const agentSock = (call.pc.dtlsTransports[0] as unknown as { dtls: Sock }).dtls;
  const newLocal = randomBytes(32);
  const newRemote = randomBytes(32);
  agentSock.cipher.localRandom = { serialize: () => newLocal };
  agentSock.cipher.remoteRandom = { serialize: () => newRemote };
  const newClientRandom = agentSock.sessionType === 1 ? newLocal : newRemote;
  await until(() => call.log.writeKeys.length >= 2, 30_000, 'second WRITE-KEYS');
  const second = call.log.writeKeys[1]!;
  t.equal(second.method, Method.ChannelBind, 'sent in a ChannelBind refresh');
  t.equal(second.keySets.length, 1, 'only the new association');
  const ks = second.keySets[0]!;
  t.not(associationId(ks.clientRandom), associationId(first.clientRandom), 'new association');
  t.ok(ks.clientRandom.equals(newClientRandom), 'client_random of the new association');
  t.notOk(ks.clientWriteKey!.equals(first.clientWriteKey!), 'new keys');
  await until(() => call.agent.records.filter((r) => r.kind === 'write-keys' && r.statuses).length >= 2, 10_000, 'KEY-STATUS for both');
});
