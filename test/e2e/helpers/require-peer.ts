// Real peers of the end-to-end tests (Debian programs, headers, capabilities). A test
// whose peer is missing must FAIL in CI (process.env.CI set: .ci/run installs every peer)
// and may only skip, with the reason, on a developer machine.
//
//   const skip = peerSkip(t, 'tshark', 'openssl');   // top level: in CI also t.fail(...)
//   t.test('...', { skip }, ...)
// or, inside a test:  if (!requirePeer(t, 'tshark')) return;   // CI: t.fail; else t.skip
//
// GATEHOUSE_TEST_HIDE_PEERS=tshark,chromium makes those peers count as missing (to prove
// that a test fails in CI without them).
import { spawnSync } from 'node:child_process';
import { accessSync, constants, existsSync, readdirSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { CHROMIUM_PATH } from './browser.js';

export type Peer =
  | 'turnserver'
  | 'turnutils_uclient'
  | 'turnutils_peer'
  | 'turnutils_stunclient'
  | 'chromium'
  | 'firefox-esr'
  | 'tshark'
  | 'dumpcap'
  | 'capture' // capturing on lo: root, or GATEHOUSE_CAN_CAPTURE=1
  | 'openssl'
  | 'libsrtp2' // /usr/include/srtp2/srtp.h and -lsrtp2
  | 'gcc'
  | 'ffmpeg'
  | 'ffprobe'
  | 'ip'
  | 'unshare'
  | 'c-icap'
  | 'c-icap-virus-scan' // virus_scan.so and clamd_mod.so in c-icap's modules directory
  | 'clamd'
  | 'sigtool'
  // The PCP firewall path (issue 10).
  | 'nft'
  | 'iptables'
  | 'nfqueue' // native/build/Release/gatehouse_nfqueue.node (libnetfilter-queue-dev + npm run build:native)
  | 'root'
  | 'hostapd'
  | 'miniupnpd'
  | 'natpmpc'
  | 'python3-libtorrent'
  // The LDAP directory (issue 12): slapd, and ldapadd/ldapmodify from ldap-utils.
  | 'slapd'
  // Kerberos (Negotiate, issue 12): an MIT KDC and its tools, curl with SPNEGO, and the
  // `kerberos` npm package built (an optional dependency: needs libkrb5-dev at npm ci).
  | 'krb5'
  // Events to Redis (issue 14).
  | 'redis-server'
  // Deploy files (issue 14): the systemd unit and the Prometheus rules are checked by the real tools.
  | 'systemd-analyze'
  | 'promtool'
  | 'curl-spnego'
  | 'kerberos-package';

/** Debian package that brings each peer (what .ci/run installs). */
export const PEER_PACKAGE: Record<Peer, string> = {
  turnserver: 'coturn',
  turnutils_uclient: 'coturn',
  turnutils_peer: 'coturn',
  turnutils_stunclient: 'coturn',
  chromium: 'chromium',
  'firefox-esr': 'firefox-esr',
  tshark: 'tshark',
  dumpcap: 'tshark (wireshark-common)',
  capture: 'root (or GATEHOUSE_CAN_CAPTURE=1)',
  openssl: 'openssl',
  libsrtp2: 'libsrtp2-dev',
  gcc: 'gcc, libc6-dev',
  ffmpeg: 'ffmpeg',
  ffprobe: 'ffmpeg',
  ip: 'iproute2',
  unshare: 'util-linux',
  'c-icap': 'c-icap',
  'c-icap-virus-scan': 'libc-icap-mod-virus-scan',
  clamd: 'clamav-daemon',
  sigtool: 'clamav',
  nft: 'nftables',
  iptables: 'iptables',
  nfqueue: 'libnetfilter-queue-dev, then npm run build:native',
  root: 'root (network namespaces, nftables)',
  hostapd: 'hostapd',
  miniupnpd: 'miniupnpd-nftables',
  natpmpc: 'natpmpc',
  'python3-libtorrent': 'python3-libtorrent',
  slapd: 'slapd, ldap-utils',
  krb5: 'krb5-kdc, krb5-admin-server, krb5-user',
  'redis-server': 'redis-server',
  'systemd-analyze': 'systemd',
  promtool: 'prometheus',
  'curl-spnego': 'curl (with GSS-API/SPNEGO)',
  'kerberos-package': 'libkrb5-dev, then npm ci (the kerberos package)',
};

/** c-icap's modules directory holding virus_scan.so (Debian: /usr/lib/<multiarch>/c_icap), or null. */
export function cIcapModulesDir(): string | null {
  for (const lib of ['/usr/lib', '/usr/lib64', '/usr/local/lib']) {
    const dirs = [join(lib, 'c_icap')];
    try {
      for (const d of readdirSync(lib)) if (d.includes('-linux-')) dirs.push(join(lib, d, 'c_icap'));
    } catch {
      /* none */
    }
    for (const d of dirs) if (existsSync(join(d, 'virus_scan.so')) && existsSync(join(d, 'clamd_mod.so'))) return d;
  }
  return null;
}

/** An executable on PATH or in the sbin directories (clamd is /usr/sbin/clamd), or null. */
export function findProgram(bin: string): string | null {
  for (const dir of [...(process.env.PATH ?? '').split(delimiter), '/usr/sbin', '/sbin', '/usr/local/sbin']) {
    if (!dir) continue;
    try {
      accessSync(join(dir, bin), constants.X_OK);
      return join(dir, bin);
    } catch {
      /* next */
    }
  }
  return null;
}

function hidden(): Set<string> {
  return new Set(
    (process.env.GATEHOUSE_TEST_HIDE_PEERS ?? '')
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean),
  );
}

/** An executable of that name on PATH (no shell). */
export function onPath(bin: string): boolean {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (!dir) continue;
    try {
      accessSync(join(dir, bin), constants.X_OK);
      return true;
    } catch {
      /* next */
    }
  }
  return false;
}

const cache = new Map<Peer, boolean>();

/** Whether the peer is present (ignoring GATEHOUSE_TEST_HIDE_PEERS). */
function present(p: Peer): boolean {
  let v = cache.get(p);
  if (v !== undefined) return v;
  switch (p) {
    case 'chromium':
      v = existsSync(CHROMIUM_PATH);
      break;
    case 'capture':
      v = process.getuid?.() === 0 || !!process.env.GATEHOUSE_CAN_CAPTURE;
      break;
    case 'libsrtp2':
      v = existsSync('/usr/include/srtp2/srtp.h');
      break;
    case 'openssl':
      v = onPath('openssl') && spawnSync('openssl', ['version'], { stdio: 'ignore' }).status === 0;
      break;
    case 'c-icap-virus-scan':
      v = cIcapModulesDir() !== null;
      break;
    case 'clamd':
      v = findProgram('clamd') !== null;
      break;
    case 'nft':
    case 'iptables':
    case 'hostapd':
    case 'miniupnpd':
      v = findProgram(p) !== null;
      break;
    case 'root':
      v = process.getuid?.() === 0;
      break;
    case 'nfqueue':
      v = existsSync(join(import.meta.dirname, '../../../native/build/Release/gatehouse_nfqueue.node'));
      break;
    case 'slapd':
      v = findProgram('slapd') !== null && onPath('ldapadd') && onPath('ldapmodify');
      break;
    case 'krb5':
      v = ['krb5kdc', 'kdb5_util', 'kadmin.local', 'kinit', 'kdestroy'].every((b) => findProgram(b) !== null);
      break;
    case 'curl-spnego':
      v = onPath('curl') && /\bSPNEGO\b/.test(spawnSync('curl', ['-V'], { encoding: 'utf8' }).stdout ?? '');
      break;
    case 'kerberos-package':
      v = existsSync(join(import.meta.dirname, '../../../node_modules/kerberos/build/Release/kerberos.node'));
      break;
    case 'python3-libtorrent':
      v = spawnSync('/usr/bin/python3', ['-c', 'import libtorrent'], { stdio: 'ignore' }).status === 0;
      break;
    default:
      v = onPath(p);
  }
  cache.set(p, v);
  return v;
}

/** The peers of the list that are missing (or hidden by GATEHOUSE_TEST_HIDE_PEERS). */
export function missingPeers(...peers: Peer[]): Peer[] {
  const h = hidden();
  return peers.filter((p) => h.has(p) || !present(p));
}

export const inCi = (): boolean => !!process.env.CI;

/** "missing: tshark (Debian package tshark), ..." */
export function describeMissing(missing: Peer[]): string {
  return `missing: ${missing.map((p) => `${p} (${PEER_PACKAGE[p]})`).join(', ')}`;
}

/** The part of a tap Test used here (tap's own overloads of skip() are looser than any signature). */
interface TapLike {
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  fail(...args: any[]): unknown;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  skip(...args: any[]): unknown;
}

/**
 * At the top of a test file, for tap's { skip } option of the tests that need `peers`:
 * false when all are present; otherwise the reason, and in CI also a failing assertion
 * of the file (so the skipped tests cannot make CI green).
 */
export function peerSkip(t: Pick<TapLike, 'fail'>, ...peers: Peer[]): string | false {
  const missing = missingPeers(...peers);
  if (!missing.length) return false;
  const reason = describeMissing(missing);
  if (inCi()) {
    t.fail(`CI: ${reason} (.ci/run installs them)`);
    return `${reason} (a failure in CI)`;
  }
  return `${reason}; skipped outside CI only (CI fails without them)`;
}

/**
 * Inside a test: true when every peer is present. Otherwise fails the test in CI, or
 * records a skip with the reason outside CI, and returns false (the caller returns).
 */
export function requirePeer(t: TapLike, ...peers: Peer[]): boolean {
  const missing = missingPeers(...peers);
  if (!missing.length) return true;
  if (inCi()) t.fail(`CI: ${describeMissing(missing)} (.ci/run installs them)`);
  else t.skip(`${describeMissing(missing)}; skipped outside CI only (CI fails without them)`);
  return false;
}
