// Consent and trust decisions of the agent against Gatehouse's TurnServer (in-process,
// loopback) with the stub gateway escrow extension: declined → KEY-DECLINE in a
// ChannelBind and no WRITE-KEYS; untrusted gateway → consent never asked, nothing sent;
// certificate fetched from a URL.
import t from 'tap';
import { createServer } from 'node:http';
import { GatewayTrust } from '../../../src/endpoint/trust.js';
import type { ConsentRequest } from '../../../src/endpoint/agent.js';
import { Method } from '../../../src/wire/stun.js';
import { escrowCall, makeGateway, until } from './helpers.js';

t.test('declined consent sends KEY-DECLINE', async (t) => {
  const gw = await makeGateway();
  const asked: ConsentRequest[] = [];
  const call = await escrowCall(gw, {
    trust: new GatewayTrust({ pinnedFingerprints: [gw.fingerprint.toString('hex')] }),
    gatewayCertificate: { pem: gw.certPem },
    consent: async (r) => {
      asked.push(r);
      return false;
    },
    declineReason: 'no thanks '.repeat(20), // longer than 128 bytes: truncated, not rejected
  });
  t.teardown(() => call.close());
  await call.exchange();
  await until(() => call.log.declines.length > 0, 30_000, 'KEY-DECLINE at gateway');
  t.equal(asked.length, 1);
  t.same(asked[0]!.wants, { media: true, data: true, required: true });
  t.ok(asked[0]!.deadline > Date.now() - 60_000, 'deadline is an absolute time');
  t.match(asked[0]!.call.peer, /^127\.0\.0\.1:\d+$/);
  const d = call.log.declines[0]!;
  t.equal(d.method, Method.ChannelBind, 'KEY-DECLINE in a ChannelBind');
  t.ok(d.reason !== null && Buffer.byteLength(d.reason) <= 128 && d.reason.startsWith('no thanks'), 'reason ≤ 128 bytes');
  await until(() => call.agent.records.some((r) => r.kind === 'decline'), 10_000, 'decline answered');
  t.equal(call.log.writeKeys.length, 0, 'no WRITE-KEYS sent');
});

t.test('untrusted gateway: consent not asked, nothing sent', async (t) => {
  const gw = await makeGateway();
  const other = await makeGateway('other');
  let asked = 0;
  const untrusted: string[] = [];
  const call = await escrowCall(gw, {
    trust: new GatewayTrust({ pinnedFingerprints: [other.fingerprint.toString('hex')] }),
    gatewayCertificate: { pem: gw.certPem },
    consent: async () => {
      asked++;
      return true;
    },
  });
  call.agent.on('untrusted', (e: { reason: string }) => untrusted.push(e.reason));
  t.teardown(() => call.close());
  await call.exchange();
  await until(() => untrusted.length > 0, 30_000, 'untrusted reported');
  t.ok(call.log.keyRequests.length > 0, 'gateway asked');
  t.equal(asked, 0, 'consent never asked');
  t.equal(call.log.writeKeys.length + call.log.declines.length, 0, 'no WRITE-KEYS nor KEY-DECLINE');
});

t.test('certificate fetched from a URL; consent granted → WRITE-KEYS', async (t) => {
  const gw = await makeGateway();
  const http = createServer((req, res) => {
    if (req.url === '/v1/gateway/certificate') {
      res.writeHead(200, { 'content-type': 'application/x-pem-file' });
      res.end(gw.certPem);
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise<void>((r) => http.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(http.address() as { port: number }).port}/v1/gateway/certificate`;
  const call = await escrowCall(gw, {
    trust: new GatewayTrust({ pinnedFingerprints: [gw.fingerprint.toString('hex')] }),
    gatewayCertificate: { url },
    consent: async () => true,
  });
  t.teardown(async () => {
    await call.close();
    http.close();
  });
  await call.exchange();
  await until(() => call.log.writeKeys.length > 0, 30_000, 'WRITE-KEYS');
  t.equal(call.log.writeKeys[0]!.method, Method.ChannelBind);
  t.equal(call.log.declines.length, 0);
});
