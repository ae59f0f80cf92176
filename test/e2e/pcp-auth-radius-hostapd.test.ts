// RFC 7652 with RADIUS pass-through (RFC 3579) to a real RADIUS/EAP server: Debian's
// hostapd (driver=none, its integrated RADIUS server and EAP-TLS server) on loopback.
// The endpoint authenticates through the real PCP server (src/pcp/server.ts, auth hook)
// with its client certificate; the gateway relays EAP in Access-Request/Challenge with
// Message-Authenticator and State, and takes the MSK from MS-MPPE-Recv-Key|Send-Key.
// The strong proof: the MSK the gateway decrypted from hostapd's MS-MPPE keys equals the
// MSK the endpoint computed from its own TLS session, and equals the key hostapd itself
// logs ("EAP-TLS: Derived key", hostapd -K), for TLS 1.2 and TLS 1.3.
// hostapd missing fails this test (not a skip): it is a Debian package the CI installs.
import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PcpServer } from '../../src/pcp/server.js';
import { PcpAuthServer } from '../../src/pcp/auth/pa-server.js';
import { RadiusBackend } from '../../src/pcp/auth/radius-backend.js';
import type { EapBackend } from '../../src/pcp/auth/backend.js';
import { authenticate } from '../../src/endpoint/pcp-auth-client.js';
import { Opcode, Result, decodePcpResponse, encodePcpRequest } from '../../src/wire/pcp.js';
import type { FirewallBackend, PcpMapping } from '../../src/pcp/hooks.js';
import { makePki } from './helpers/pcp-auth-pki.js';
import { PcpUdpClient } from './helpers/pcp-auth-udp.js';
import { findProgram, requirePeer } from './helpers/require-peer.js';
import { freePort } from './helpers/ports.js';

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

/** Wraps a backend to keep a copy of each MSK it hands to the PA server (the PA server zeroes its own). */
function recording(inner: EapBackend, msks: Buffer[]): EapBackend {
  return {
    name: inner.name,
    open() {
      const s = inner.open();
      return {
        firstRequest: () => s.firstRequest(),
        close: () => s.close(),
        async step(r) {
          const out = await s.step(r);
          if (out.outcome?.ok) msks.push(Buffer.from(out.outcome.msk));
          return out;
        },
      };
    },
    close: () => inner.close?.(),
  };
}

const hidden = (process.env.GATEHOUSE_TEST_HIDE_PEERS ?? '').split(',').includes('hostapd');
const HOSTAPD = hidden ? null : findProgram('hostapd');

t.test('RADIUS pass-through to hostapd', async (t) => {
  if (!HOSTAPD) {
    t.fail('missing: hostapd (Debian package hostapd): this test needs a real RADIUS/EAP server');
    return;
  }
  if (!requirePeer(t, 'openssl')) return;
  const pki = makePki();
  t.teardown(() => pki.cleanup());
  const port = await freePort('udp');
  const secret = randomBytes(12).toString('hex');
  writeFileSync(join(pki.dir, 'clients'), `127.0.0.1/32 ${secret}\n`);
  writeFileSync(join(pki.dir, 'users'), '"alice@example.com" TLS\n');
  writeFileSync(
    join(pki.dir, 'hostapd.conf'),
    [
      'driver=none',
      'logger_stdout=-1',
      'logger_stdout_level=0',
      `radius_server_clients=${join(pki.dir, 'clients')}`,
      `radius_server_auth_port=${port}`,
      'eap_server=1',
      `eap_user_file=${join(pki.dir, 'users')}`,
      `ca_cert=${pki.caPath}`,
      `server_cert=${pki.serverCertPath}`,
      `private_key=${pki.serverKeyPath}`,
      // EAP-TLS fragments small enough for an EAP_PAYLOAD in a 1100-octet PCP message (RFC 6887 §7).
      'fragment_size=900',
      'tls_flags=[ENABLE-TLSv1.3]',
      '',
    ].join('\n'),
  );
  let log = '';
  // -dd -K: debug output including keys, so the test reads hostapd's own MSK.
  const hostapd: ChildProcess = spawn(HOSTAPD, ['-dd', '-K', join(pki.dir, 'hostapd.conf')], { stdio: ['ignore', 'pipe', 'pipe'] });
  hostapd.stdout!.on('data', (d) => (log += d.toString()));
  hostapd.stderr!.on('data', (d) => (log += d.toString()));
  t.teardown(() => {
    hostapd.kill('SIGTERM');
  });
  for (let i = 0; i < 100 && !log.includes('Setup of interface done'); i++) await new Promise((r) => setTimeout(r, 50));
  t.match(log, /Setup of interface done/, 'hostapd is up');

  const fw = new RecordingBackend();
  const msks: Buffer[] = [];
  const radius = new RadiusBackend({ address: '127.0.0.1', port, secret, timeout: 1500, retries: 1 });
  const auth = new PcpAuthServer({ backend: recording(radius, msks), required: true });
  const server = new PcpServer({ listen: ['udp://127.0.0.1:0'], externalAddress: '203.0.113.7', firewall: fw, auth });
  await server.start();
  t.teardown(async () => {
    await server.close();
    auth.close();
  });
  const addr = server.addresses()[0]!;

  let internalPort = 7000;
  for (const v of ['TLSv1.2', 'TLSv1.3'] as const) {
    t.test(`${v}: endpoint → PCP server → RADIUS → hostapd`, async (t) => {
      const c = await PcpUdpClient.open(addr);
      t.teardown(() => c.close());
      const logStart = log.length;
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
      t.equal(a.sa.tlsVersion, v, 'hostapd negotiated this TLS version with the endpoint');
      const gatewayMsk = msks.at(-1)!;
      t.equal(gatewayMsk.length, 64);
      t.ok(gatewayMsk.equals(a.sa.msk), "MSK from MS-MPPE-Recv-Key|Send-Key == MSK from the endpoint's TLS exporter");
      const hostapdKeys = [...log.slice(logStart).matchAll(/EAP-TLS: Derived key - hexdump\(len=64\):((?: [0-9a-f]{2})+)/g)].map((m) =>
        m[1]!.replace(/ /g, ''),
      );
      t.same(hostapdKeys, [gatewayMsk.toString('hex')], "hostapd's own MSK (its debug log) == what the gateway decrypted");
      const sa = auth.saFor({ address: '127.0.0.1', port: c.port })!;
      t.ok(sa.transportKey.equals(a.sa.transportKey), 'SA transport key equal on both sides');
      t.equal(sa.identity, 'alice@example.com', 'identity: the RADIUS User-Name');
      const req = a.tag(
        encodePcpRequest({
          opcode: Opcode.MAP,
          lifetime: 300,
          clientAddress: '127.0.0.1',
          map: { nonce: randomBytes(12), protocol: 6, internalPort: internalPort++, externalPort: 0, externalAddress: '0.0.0.0' },
        }),
      );
      const resp = await c.request(req);
      t.ok(resp && a.verify(resp), 'tagged MAP answered with a valid tag');
      const d = resp && decodePcpResponse(resp);
      t.ok(d && d.ok && d.value.result === Result.SUCCESS, 'MAP SUCCESS');
    });
  }

  t.test('hostapd rejects an unknown user: AUTHENTICATION_FAILED', async (t) => {
    const c = await PcpUdpClient.open(addr);
    t.teardown(() => c.close());
    const err = await authenticate(c.send, {
      clientAddress: '127.0.0.1',
      cert: pki.clientCert,
      key: pki.clientKey,
      ca: pki.ca,
      identity: 'bob@example.com',
    }).catch((e) => e);
    t.equal((err as { result?: number }).result, Result.AUTHENTICATION_FAILED);
    t.equal(auth.saFor({ address: '127.0.0.1', port: c.port }), null, 'no SA');
  });

  t.test('a wrong shared secret: hostapd drops the Access-Request (bad Message-Authenticator), no SA', async (t) => {
    const bad = new RadiusBackend({ address: '127.0.0.1', port, secret: 'not-the-secret', timeout: 400, retries: 1 });
    const auth2 = new PcpAuthServer({ backend: bad, required: true });
    const server2 = new PcpServer({ listen: ['udp://127.0.0.1:0'], externalAddress: '203.0.113.8', firewall: fw, auth: auth2 });
    await server2.start();
    t.teardown(async () => {
      await server2.close();
      auth2.close();
    });
    const c = await PcpUdpClient.open(server2.addresses()[0]!);
    t.teardown(() => c.close());
    const logStart = log.length;
    const err = await authenticate(c.send, {
      clientAddress: '127.0.0.1',
      cert: pki.clientCert,
      key: pki.clientKey,
      ca: pki.ca,
      identity: 'alice@example.com',
    }).catch((e) => e);
    t.equal((err as { result?: number }).result, Result.AUTHENTICATION_FAILED);
    t.equal(bad.stats.timeouts, 1, 'the RADIUS request timed out');
    t.match(
      log.slice(logStart),
      /Invalid Message-Authenticator|Message-Authenticator.*invalid|Dropping|drop/i,
      'hostapd says why it dropped it',
    );
  });
});
