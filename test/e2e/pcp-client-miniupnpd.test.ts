// The endpoint agent's PCP client (src/endpoint/pcp-client.ts) against REAL miniupnpd
// (Debian miniupnpd-nftables) in a network namespace this test creates:
//
//   root ns: the client, <lan>.2 on veth gmhN  <──>  ns ghmu-N: gmlN <lan>.1 (listening_ip),
//                                                     ext0 11.0.0.1 (ext_ifname; the other end ext1)
//
// miniupnpd runs in the foreground (-d) with its config and nftables skeleton in a temp dir
// and programs its own chains of `table inet miniupnpd` inside the namespace. The test checks
// miniupnpd's answers (SUCCESS, assigned external address and port, lifetime), that the
// mapping appears in that namespace's `nft list ruleset` and disappears after the delete,
// that a renewal keeps it, and that a restart of miniupnpd (its epoch starts again, RFC 6887
// §8.5) makes the client re-create the mapping. miniupnpd, nft or ip missing FAILS the test.
import t from 'tap';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PcpClient, type PcpMapping, type PcpMappingInfo } from '../../src/endpoint/pcp-client.js';
import { Result, resultName } from '../../src/wire/pcp.js';
import { findProgram } from './helpers/require-peer.js';

// GATEHOUSE_TEST_HIDE_PEERS=miniupnpd makes it count as missing (to prove the test then fails).
const HIDDEN = new Set((process.env.GATEHOUSE_TEST_HIDE_PEERS ?? '').split(',').map((x) => x.trim()));
const MINIUPNPD = HIDDEN.has('miniupnpd') ? null : findProgram('miniupnpd');
const NFT = findProgram('nft');
const IP = findProgram('ip');

const id = process.pid % 10000;
const NS = `ghmu-${id}`;
const HOST_IF = `gmh${id}`;
const NS_IF = `gml${id}`;
const LAN = `10.97.${id % 250}`;
const SERVER = `${LAN}.1`;
const CLIENT = `${LAN}.2`;
const EXT = '11.0.0.1';

function sh(args: string[], allowFail = false): string {
  const r = spawnSync(args[0]!, args.slice(1), { encoding: 'utf8' });
  if (r.status !== 0 && !allowFail) throw new Error(`${args.join(' ')}: ${r.stderr || r.stdout}`);
  return r.stdout;
}

function ruleset(): string {
  return sh([IP!, 'netns', 'exec', NS, NFT!, 'list', 'ruleset']);
}

function teardown(): void {
  sh([IP!, 'netns', 'del', NS], true);
  sh([IP!, 'link', 'del', HOST_IF], true);
}

const INIT_NFT = `table inet miniupnpd {
  chain miniupnpd {
  }
  chain prerouting_miniupnpd {
  }
  chain postrouting_miniupnpd {
  }
  chain forward {
    type filter hook forward priority 0; policy drop;
    jump miniupnpd
  }
  chain prerouting {
    type nat hook prerouting priority -100; policy accept;
    jump prerouting_miniupnpd
  }
  chain postrouting {
    type nat hook postrouting priority 100; policy accept;
    jump postrouting_miniupnpd
  }
}
`;

function startMiniupnpd(dir: string, out: string[]): Promise<ChildProcess> {
  const p = spawn(IP!, ['netns', 'exec', NS, MINIUPNPD!, '-f', join(dir, 'miniupnpd.conf'), '-d', '-P', join(dir, 'miniupnpd.pid')], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`miniupnpd did not start:\n${out.join('')}`)), 10_000);
    const on = (b: Buffer): void => {
      out.push(b.toString());
      if (out.join('').includes('Listening for NAT-PMP/PCP traffic')) {
        clearTimeout(timer);
        resolve(p);
      }
    };
    p.stdout!.on('data', on);
    p.stderr!.on('data', on);
    p.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`miniupnpd exited ${code}:\n${out.join('')}`));
    });
  });
}

function stop(p: ChildProcess | null): Promise<void> {
  if (!p || p.exitCode !== null) return Promise.resolve();
  return new Promise((res) => {
    p.once('exit', () => res());
    p.kill('SIGTERM');
    setTimeout(() => p.kill('SIGKILL'), 3000).unref();
  });
}

function once<T extends unknown[]>(m: PcpMapping | PcpClient, ev: string, ms: number): Promise<T> {
  return new Promise((res, rej) => {
    const timer = setTimeout(() => rej(new Error(`no '${ev}' within ${ms} ms`)), ms);
    m.once(ev, (...a: unknown[]) => {
      clearTimeout(timer);
      res(a as T);
    });
  });
}

t.test('PCP client creates, refreshes, re-creates (epoch) and deletes MAP (and PEER) mappings on real miniupnpd', async (t) => {
  const missing = [!MINIUPNPD && 'miniupnpd (Debian miniupnpd-nftables)', !NFT && 'nft (nftables)', !IP && 'ip (iproute2)'].filter(Boolean);
  if (missing.length) {
    t.fail(`missing: ${missing.join(', ')}`);
    return;
  }
  if (process.getuid?.() !== 0) {
    t.fail('needs root (ip netns, nftables inside the namespace)');
    return;
  }
  teardown();
  const dir = mkdtempSync(join(tmpdir(), 'gh-miniupnpd-'));
  let mupnp: ChildProcess | null = null;
  let client: PcpClient | null = null;
  const out: string[] = [];
  t.teardown(async () => {
    await client?.close().catch(() => undefined);
    await stop(mupnp);
    teardown();
    rmSync(dir, { recursive: true, force: true });
  });

  sh([IP!, 'netns', 'add', NS]);
  sh([IP!, 'link', 'add', HOST_IF, 'type', 'veth', 'peer', 'name', NS_IF]);
  sh([IP!, 'link', 'set', NS_IF, 'netns', NS]);
  sh([IP!, 'addr', 'add', `${CLIENT}/24`, 'dev', HOST_IF]);
  sh([IP!, 'link', 'set', HOST_IF, 'up']);
  sh([IP!, '-n', NS, 'addr', 'add', `${SERVER}/24`, 'dev', NS_IF]);
  sh([IP!, '-n', NS, 'link', 'set', NS_IF, 'up']);
  sh([IP!, '-n', NS, 'link', 'set', 'lo', 'up']);
  // The external interface: a veth pair inside the namespace (no dummy module on every kernel).
  sh([IP!, '-n', NS, 'link', 'add', 'ext0', 'type', 'veth', 'peer', 'name', 'ext1']);
  sh([IP!, '-n', NS, 'addr', 'add', `${EXT}/24`, 'dev', 'ext0']);
  sh([IP!, '-n', NS, 'link', 'set', 'ext0', 'up']);
  sh([IP!, '-n', NS, 'link', 'set', 'ext1', 'up']);

  writeFileSync(join(dir, 'init.nft'), INIT_NFT);
  sh([IP!, 'netns', 'exec', NS, NFT!, '-f', join(dir, 'init.nft')]);
  // miniupnpd.conf(5): PCP/NAT-PMP on, UPnP off, our table and chain names, a public ext address
  // (miniupnpd refuses port forwarding on a private one), lifetimes bounded 1..86400 s.
  writeFileSync(
    join(dir, 'miniupnpd.conf'),
    [
      'ext_ifname=ext0',
      `listening_ip=${NS_IF}`,
      'enable_natpmp=yes',
      'enable_upnp=no',
      'secure_mode=yes',
      'uuid=3d3cec3a-8cf0-11e0-98ee-001a6bd2d07b',
      'min_lifetime=1',
      'max_lifetime=86400',
      'upnp_table_name=miniupnpd',
      'upnp_nat_table_name=miniupnpd',
      'upnp_forward_chain=miniupnpd',
      'upnp_nat_chain=prerouting_miniupnpd',
      'upnp_nat_postrouting_chain=postrouting_miniupnpd',
      `allow 1024-65535 ${LAN}.0/24 1024-65535`,
      'deny 0-65535 0.0.0.0/0 0-65535',
      '',
    ].join('\n'),
  );
  mupnp = await startMiniupnpd(dir, out);

  client = new PcpClient({ server: SERVER, clientAddress: CLIENT });
  await client.start();
  const port = 41000 + (id % 1000);
  const m = client.map({ protocol: 17, internalPort: port, suggestedExternalPort: port, lifetime: 8 });
  const info = await m.ready;
  t.equal(info.externalAddress, EXT, 'miniupnpd assigned its external address');
  t.equal(info.externalPort, port, 'miniupnpd granted the suggested external port');
  t.equal(info.lifetime, 8, 'miniupnpd granted the requested lifetime');
  t.equal(m.state, 'active');
  let rs = ruleset();
  t.match(rs, new RegExp(`th dport ${port} dnat ip to ${CLIENT.replace(/\./g, '\\.')}:${port}`), 'DNAT rule in prerouting_miniupnpd');
  t.match(rs, new RegExp(`chain miniupnpd \\{[^}]*th dport ${port}[^}]*accept`), 'filter rule in miniupnpd chain');

  // PEER (RFC 6887 §12) for a remote peer on the external side.
  const p = client.peer({
    protocol: 17,
    internalPort: port + 1,
    suggestedExternalPort: port + 1,
    lifetime: 8,
    remoteAddress: '11.0.0.9',
    remotePort: 3478,
  });
  const pinfo = await p.ready;
  t.equal(pinfo.externalAddress, EXT, 'PEER: external address');
  t.equal(pinfo.externalPort, port + 1, 'PEER: suggested external port granted');
  t.equal(pinfo.lifetime, 8, 'PEER: lifetime');
  const snat = new RegExp(`chain postrouting_miniupnpd \\{[^}]*snat ip to ${EXT.replace(/\./g, '\\.')}:${port + 1}`);
  t.match(ruleset(), snat, 'PEER: SNAT rule in postrouting_miniupnpd');
  await p.delete();
  t.equal(p.state, 'deleted', 'PEER deleted on the client side');
  // miniupnpd 2.3.1 (nftables) cannot find its own PEER rule again ("Unknown cmp", "PCP PEER:
  // Failed to find PCP mapping") and answers the delete NO_RESOURCES; the request itself is
  // right (lifetime 0, same nonce, §15), so we only require an answer here.
  t.not(p.deleteResult, null, `miniupnpd answered the PEER delete (${resultName(p.deleteResult ?? -1)})`);

  // RFC 6887 §11.2.1: renewal in [1/2, 5/8] of 8 s.
  const t0 = Date.now();
  const [rinfo, solicited] = await once<[PcpMappingInfo, boolean]>(m, 'refreshed', 9000);
  const dt = Date.now() - t0;
  t.ok(dt >= 3500 && dt <= 5500, `renewed after ${dt} ms (4..5 s after the grant)`);
  t.equal(solicited, true, 'the answer to our renewal');
  t.equal(rinfo.externalPort, port, 'same external port after renewal');
  t.equal(rinfo.lifetime, 8);
  t.match(ruleset(), new RegExp(`th dport ${port} dnat`), 'rule still there after renewal');

  // Restart miniupnpd: its Epoch Time starts again (RFC 6887 §8.5), the client re-creates.
  await stop(mupnp);
  sh([IP!, 'netns', 'exec', NS, NFT!, 'flush', 'chain', 'inet', 'miniupnpd', 'prerouting_miniupnpd']);
  sh([IP!, 'netns', 'exec', NS, NFT!, 'flush', 'chain', 'inet', 'miniupnpd', 'miniupnpd']);
  sh([IP!, 'netns', 'exec', NS, NFT!, 'flush', 'chain', 'inet', 'miniupnpd', 'postrouting_miniupnpd']);
  t.notMatch(ruleset(), new RegExp(`dport ${port}`), 'rules gone with the old miniupnpd');
  out.length = 0;
  // Let the client's next renewal see the old server's absence first; the epoch must look
  // invalid: our clock moves on, miniupnpd's epoch restarts near 0.
  await new Promise((r) => setTimeout(r, 2500));
  mupnp = await startMiniupnpd(dir, out);
  const reset = once<[number]>(client, 'epochReset', 12_000);
  await reset;
  t.pass('epoch jump detected');
  await once(m, 'refreshed', 8000).catch(() => once(m, 'changed', 1));
  t.equal(m.state, 'active', 'mapping re-created');
  t.match(ruleset(), new RegExp(`th dport ${port} dnat ip to`), 'rule re-created on the restarted miniupnpd');

  await m.delete();
  t.equal(m.state, 'deleted');
  t.equal(m.deleteResult, Result.SUCCESS, 'miniupnpd answered the delete (lifetime 0) with SUCCESS');
  rs = ruleset();
  t.notMatch(rs, new RegExp(`dport ${port}`), 'mapping gone from the ruleset after delete');
  t.match(rs, /chain prerouting_miniupnpd/, "miniupnpd's chains remain");
  await new Promise((r) => setTimeout(r, 200));
  t.match(out.join(''), new RegExp(`PCP: UDP port ${port} mapping removed`), 'miniupnpd logged the removal');
});
