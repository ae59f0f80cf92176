// `gatehouse endpoint --pcp` end to end, in-process: the compliant offerer maps its UDP host
// candidates on Gatehouse's PCP server (src/pcp/server.ts on loopback, recording firewall
// backend, the gateway's escrow extension asking for keys), advertises them as srflx in
// offer.json, calls a plain werift answerer (--no-escrow), refuses to escrow without an
// RFC 7652 security association (key-escrow.md §4), and deletes its mappings at exit.
import t from 'tap';
import { X509Certificate, createHash, createPrivateKey } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { networkInterfaces, tmpdir } from 'node:os';
import { join } from 'node:path';
import { runEndpoint, ENDPOINT_HELP } from '../../src/cli/endpoint.js';
import { PcpServer } from '../../src/pcp/server.js';
import type { FirewallBackend, PcpMapping as ServerMapping } from '../../src/pcp/hooks.js';
import { PcpEscrowExtension, type PcpEscrowHost } from '../../src/gateway/pcp-escrow.js';
import type { PcpFlow } from '../../src/gateway/pcp-path.js';
import { createSelfSigned } from '../../src/store/identity.js';
import { captureIo } from './helpers/run.js';

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

t.test('--pcp usage', async (t) => {
  t.match(ENDPOINT_HELP, /--pcp ADDRESS\[:PORT\]/);
  const base = ['--role', 'offer', '--signal-dir', '/tmp/x'];
  const a = captureIo();
  t.equal(await runEndpoint([...base, '--pcp', '10.0.0.1:99999', '--gateway-cert-fingerprint', '00'.repeat(32)], a.io), 2);
  t.match(a.err(), /bad --pcp/);
  const b = captureIo();
  t.equal(await runEndpoint([...base, '--pcp', '10.0.0.1', '--no-escrow'], b.io), 2);
  t.match(b.err(), /drop --no-escrow/);
  const c = captureIo();
  t.equal(await runEndpoint([...base, '--pcp', '10.0.0.1', '--turn', 'turn:127.0.0.1:3478', '--user', 'u', '--password', 'p'], c.io), 2);
  t.match(c.err(), /exclude each other/);
  const d = captureIo();
  t.equal(await runEndpoint(base, d.io), 2);
  t.match(d.err(), /--turn or --pcp/);
});

t.test('--pcp: host candidates mapped, srflx in the offer, call connects, no SA no keys, mappings deleted at exit', async (t) => {
  const { keyPem, certPem } = await createSelfSigned('gatehouse pcp cli e2e');
  const der = new X509Certificate(certPem).raw;
  const identity = {
    privateKey: createPrivateKey(keyPem),
    certificatePem: certPem,
    certificateDer: der,
    fingerprint: createHash('sha256').update(der).digest(),
  };
  const host: PcpEscrowHost = {
    keysPolicy: () => ({ required: true, deadline: 5000, unverified: 'hold', block_for: 300_000, media: false, data: true }),
    applyKeySet: () => 'verified',
    applyDecline: () => undefined,
    keyRequested: () => undefined,
    isBlocked: () => false,
    writeKeysRejected: () => undefined,
  };
  const escrow = new PcpEscrowExtension(
    host,
    { flowsOfMapping: (m) => [{ mapping: m, peerAddress: '127.0.0.1' } as unknown as PcpFlow], findFlow: () => undefined },
    identity,
  );
  const fw = new RecordingBackend();
  // The PCP server on the host's first external IPv4 address: the one werift makes a host
  // candidate on and the source address the endpoint reaches it from (RFC 6887 §8.1).
  const lan = Object.values(networkInterfaces())
    .flat()
    .find((a) => a && a.family === 'IPv4' && !a.internal)?.address;
  if (!lan) {
    t.fail('no external IPv4 address on this host (werift host candidates need one)');
    return;
  }
  const server = new PcpServer({ listen: [`udp://${lan}:0`], externalAddress: '203.0.113.7', firewall: fw, extension: escrow });
  escrow.setSender(server);
  await server.start();
  const dir = mkdtempSync(join(tmpdir(), 'gh-pcp-cli-'));
  t.teardown(async () => {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const port = server.addresses()[0]!.port;
  writeFileSync(join(dir, 'gw.pem'), certPem);
  const sig = join(dir, 'signal');
  const off = captureIo();
  const ans = captureIo();
  const [rcOffer, rcAnswer] = await Promise.all([
    runEndpoint(
      [
        '--role',
        'offer',
        '--signal-dir',
        sig,
        '--pcp',
        `${lan}:${port}`,
        '--gateway-cert-fingerprint',
        identity.fingerprint.toString('hex'),
        '--gateway-cert',
        join(dir, 'gw.pem'),
        '--consent',
        'always',
        '--message',
        'hello over the firewall path',
        '--hold',
        '1',
        '--timeout',
        '60',
        '--json',
      ],
      off.io,
    ),
    runEndpoint(['--role', 'answer', '--signal-dir', sig, '--no-escrow', '--hold', '2', '--timeout', '60', '--json'], ans.io),
  ]);
  t.equal(rcOffer, 0, `offerer ok: ${off.err()}`);
  t.equal(rcAnswer, 0, `answerer ok: ${ans.err()}`);
  const so = JSON.parse(off.out()) as {
    connected: boolean;
    untrusted: string[];
    pcp?: { mappings: Array<{ internal: string; external: string; lifetime: number }>; escrow: unknown[] };
  };
  const sa = JSON.parse(ans.out()) as { messages: string[] };
  t.ok(so.connected);
  t.same(sa.messages, ['hello over the firewall path']);
  t.ok(so.pcp && so.pcp.mappings.length >= 1, 'summary lists the PCP mappings');
  t.equal(so.pcp!.mappings.length, fw.installed.length, 'one server mapping per advertised mapping');
  for (const m of so.pcp!.mappings) t.match(m.external, /^203\.0\.113\.7:\d+$/, `${m.internal} mapped on the gateway address`);
  const offer = JSON.parse(readFileSync(join(sig, 'offer.json'), 'utf8')) as { sdp: string };
  const srflx = offer.sdp.split('\r\n').filter((l) => l.includes(' typ srflx'));
  t.equal(srflx.length, so.pcp!.mappings.length, 'each mapping advertised as a srflx candidate');
  for (const m of so.pcp!.mappings) {
    const [ea, ep] = m.external.split(':');
    const [ia, ip] = m.internal.split(':');
    t.ok(
      srflx.some((l) => l.includes(` ${ea} ${ep} typ srflx raddr ${ia} rport ${ip}`)),
      `srflx ${m.external} with base ${m.internal}`,
    );
  }
  t.same(so.pcp!.escrow, [], 'no keys escrowed without an RFC 7652 SA');
  t.match(so.untrusted.join(), /security association/, 'the refusal is in the summary');
  t.equal(fw.removed.length, fw.installed.length, 'every mapping deleted at exit (RFC 6887 §15)');
});
