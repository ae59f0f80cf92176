// RFC 7652 over real UDP through the real PCP server (src/pcp/server.ts with its `auth`
// hook): the endpoint's PA client authenticates with EAP-TLS (TLS 1.2 and TLS 1.3, its
// client certificate, openssl-made PKI) against the built-in EAP-TLS server; the SA's
// transport key is the same on both sides; tagged MAP requests succeed and carry the
// identity; the rejections RFC 7652 asks for are observed on the wire.
// The firewall backend records mappings (the kernel side is tested elsewhere).
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { PcpServer } from '../../src/pcp/server.js';
import { PcpAuthServer } from '../../src/pcp/auth/pa-server.js';
import { EapTlsServer } from '../../src/pcp/auth/eap-tls-server.js';
import { authenticate } from '../../src/endpoint/pcp-auth-client.js';
import { Opcode, Result, decodePcpResponse, encodePcpRequest } from '../../src/wire/pcp.js';
import type { FirewallBackend, PcpMapping } from '../../src/pcp/hooks.js';
import { makePki } from './helpers/pcp-auth-pki.js';
import { PcpUdpClient } from './helpers/pcp-auth-udp.js';
import { requirePeer } from './helpers/require-peer.js';

class RecordingBackend implements FirewallBackend {
  readonly name = 'recording';
  readonly available = true;
  installed: PcpMapping[] = [];
  async install(m: PcpMapping): Promise<void> {
    this.installed.push(m);
  }
  async update(): Promise<void> {}
  async remove(): Promise<void> {}
  async close(): Promise<void> {}
}

function map(port: number): Buffer {
  return encodePcpRequest({
    opcode: Opcode.MAP,
    lifetime: 300,
    clientAddress: '127.0.0.1',
    map: { nonce: randomBytes(12), protocol: 17, internalPort: port, externalPort: 0, externalAddress: '0.0.0.0' },
  });
}

t.test('EAP-TLS through the PCP server over UDP', async (t) => {
  if (!requirePeer(t, 'openssl')) return;
  const pki = makePki();
  t.teardown(() => pki.cleanup());
  const fw = new RecordingBackend();
  let server: PcpServer | null = null;
  const auth = new PcpAuthServer({
    backend: new EapTlsServer({ ca: pki.ca, cert: pki.serverCert, key: pki.serverKey }),
    required: true,
    lifetime: 3,
    epoch: () => server?.epoch.seconds() ?? 0,
  });
  server = new PcpServer({ listen: ['udp://127.0.0.1:0'], externalAddress: '203.0.113.7', firewall: fw, auth });
  await server.start();
  t.teardown(async () => {
    await server!.close();
    auth.close();
  });
  const addr = server.addresses()[0]!;

  for (const v of ['TLSv1.2', 'TLSv1.3'] as const) {
    t.test(`${v}: authenticate, SA keys equal, tagged MAP`, async (t) => {
      const c = await PcpUdpClient.open(addr);
      t.teardown(() => c.close());
      const a = await authenticate(c.send, {
        clientAddress: '127.0.0.1',
        cert: pki.clientCert,
        key: pki.clientKey,
        ca: pki.ca,
        servername: 'gw.test',
        minVersion: v,
        maxVersion: v,
        identity: 'alice@example.com',
      });
      t.equal(a.sa.tlsVersion, v, 'negotiated version');
      const sa = auth.saFor({ address: '127.0.0.1', port: c.port });
      t.ok(sa, 'the server has an SA for this client socket');
      t.ok(sa!.transportKey.equals(a.sa.transportKey), 'transport key equal on both sides');
      t.equal(sa!.sessionId, a.sa.sessionId);
      t.equal(a.sa.lifetime, 3, 'SESSION_LIFETIME');

      const before = fw.installed.length;
      const resp = await c.request(a.tag(map(v === 'TLSv1.2' ? 6000 : 6001)));
      t.ok(resp, 'answered');
      const d = decodePcpResponse(resp!);
      t.ok(d.ok && d.value.result === Result.SUCCESS, 'MAP SUCCESS', { result: d.ok ? d.value.result : d.error });
      t.ok(a.verify(resp!), 'response carries a valid AUTHENTICATION_TAG from the server');
      t.equal(fw.installed.length, before + 1);
      t.equal(fw.installed.at(-1)!.user, 'alice@example.com', 'mapping carries the authenticated identity');
    });
  }

  t.test('rejections on the wire', async (t) => {
    const c = await PcpUdpClient.open(addr);
    t.teardown(() => c.close());
    const a = await authenticate(c.send, { clientAddress: '127.0.0.1', cert: pki.clientCert, key: pki.clientKey, ca: pki.ca });
    const installed = fw.installed.length;

    const good = a.tag(map(6100));
    const flipped = Buffer.from(good);
    flipped[flipped.length - 1]! ^= 0x01;
    t.equal(await c.request(flipped, 700), null, 'flipped AUTHENTICATION_TAG byte: no answer (silently discarded)');

    const ok = await c.request(good);
    t.ok(ok && decodePcpResponse(ok).ok && a.verify(ok), 'the unmodified request is answered, tagged');
    t.equal(await c.request(good, 700), null, 'the same datagram again (replayed sequence number): no answer');
    t.equal(fw.installed.length, installed + 1, 'only the genuine request made a mapping');

    const plain = await c.request(map(6101));
    const p = plain && decodePcpResponse(plain);
    t.ok(p && p.ok && p.value.result === Result.AUTHENTICATION_REQUIRED, 'no tag: AUTHENTICATION_REQUIRED');

    await new Promise((r) => setTimeout(r, 3200));
    t.ok(a.expired(), 'the client sees its PA lifetime over');
    const late = await c.request(a.tag(map(6102)));
    const l = late && decodePcpResponse(late);
    t.ok(l && l.ok && l.value.result === Result.UNKNOWN_SESSION_ID, 'expired SA: UNKNOWN_SESSION_ID');
    t.equal(fw.installed.length, installed + 1, 'no mapping from rejected requests');

    const again = await authenticate(c.send, { clientAddress: '127.0.0.1', cert: pki.clientCert, key: pki.clientKey, ca: pki.ca });
    t.not(again.sa.sessionId, a.sa.sessionId, 're-authentication: a new session');
    const r = await c.request(again.tag(map(6103)));
    t.ok(r && again.verify(r) && decodePcpResponse(r).ok, 'tagged requests work again after re-authentication');
  });

  t.test('a client certificate of another CA: AUTHENTICATION_FAILED, no SA', async (t) => {
    const c = await PcpUdpClient.open(addr);
    t.teardown(() => c.close());
    const err = await authenticate(c.send, { clientAddress: '127.0.0.1', cert: pki.rogueCert, key: pki.rogueKey, ca: pki.ca }).catch(
      (e) => e,
    );
    t.equal((err as { result?: number }).result, Result.AUTHENTICATION_FAILED);
    t.equal(auth.saFor({ address: '127.0.0.1', port: c.port }), null);
  });
});
