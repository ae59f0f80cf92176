import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { availableParallelism } from 'node:os';
import { isScalar } from 'yaml';
import { bool, checked, fail, failAtPath, int, list, nodeAt, nullable, obj, oneOf, parseYaml, str, type Schema } from './validate.js';
import { ldapCheck, ldapConfigSchema, type LdapConfig } from './ldap.js';
import { kerberosConfigSchema, type KerberosConfig } from './kerberos.js';
import { lookupAccount } from '../util/drop-privileges.js';

/**
 * The one configuration object (design.md): validated once at start, passed down;
 * no module reads the environment. Keys follow shared/spec/contract.md; the extra keys
 * documented in the README extend it.
 */
export interface UserEntry {
  name: string;
  password: string;
  groups: string[];
}

export interface GatehouseConfig {
  realm: string;
  data_dir: string;
  /** IANA time zone of quota windows (day/week/month); default: the system's. */
  timezone: string;
  log_level: 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'silent';
  turn: {
    listen: string[];
    relay_address: string;
    /**
     * Issue 14: the address clients reach this server's TURN listeners on, as other cluster
     * nodes name it in ALTERNATE-SERVER (an IP: RFC 8489 §14.15); null: the listen address,
     * or relay_address for a wildcard listen.
     */
    public_address: string | null;
    relay_ports: number[];
    peers: { allow: string[]; deny: string[] };
    rest_secret: string | null;
    tls: { cert: string | null; key: string | null };
    software: string;
    /** RFC 8656 §7.2: the server's maximum allocation lifetime, seconds. */
    max_lifetime: number;
    /** RFC 8656 §3.2, §7.2: default allocation lifetime, seconds. */
    default_lifetime: number;
    /** RFC 8489 §9.2: how long a nonce stays fresh before 438 Stale Nonce, seconds. */
    nonce_lifetime: number;
    /** RFC 8656 §7.2 step 10: 486 Allocation Quota Reached beyond this, per user. */
    max_allocations_per_user: number;
    /**
     * Issue 14, load shedding: allocations this server takes at most (null: no limit but the
     * relay port range). At it, Allocate gets 300 Try Alternate naming a less loaded cluster
     * node (RFC 8489 §10), or 508 Insufficient Capacity when none has room; 0 drains the node.
     */
    max_allocations: number | null;
    /**
     * RFC 8656 §12: channel numbers 0x4000-0x4FFF. `rfc5766` also accepts the older
     * 0x4000-0x7FFF range that some clients (coturn's turnutils_uclient) still use.
     */
    channel_numbers: 'rfc8656' | 'rfc5766';
    /** Bounds (README "Limits"): beyond each, the RFC's error code (508, 486) or a refused connection. */
    max_permissions_per_allocation: number;
    max_channels_per_allocation: number;
    /** Flows (permissions, allocation × peer address) per user and on the whole server. */
    max_flows_per_user: number;
    max_flows: number;
    /** TCP/TLS connections open from one source address, and in total. */
    max_connections_per_source: number;
    max_connections: number;
    /** Seconds a TCP/TLS connection may stay silent before it is closed. */
    connection_idle_timeout: number;
    /** Allocate requests and 401 answers per source address per second (token bucket, burst 2×). */
    allocate_rate_per_source: number;
    unauthorized_rate_per_source: number;
    /** Issue 13: `auto` relays peer -> client of hook-free flows in native/fastpath.c when built; `off`: all in JS. */
    fast_path: 'off' | 'auto';
    /**
     * Issue 13: relay worker processes (`auto`: os.availableParallelism(), resolved here),
     * each on its own SO_REUSEPORT listener sockets with its share of relay_ports
     * (src/turn/workers.ts). 1: one process, as before. More needs store.redis.
     */
    workers: number;
    /**
     * Issue 13: the account relay workers drop to after they got their sockets (a passwd
     * name, or uid / uid:gid); they then get the gateway's private keys only from the
     * supervisor's key broker (src/util/key-broker.ts). null: workers keep the
     * supervisor's account (still served by the broker, by pid and start time).
     */
    worker_user: string | null;
  };
  /** The live composition's bounds (README "Limits"). */
  gateway: {
    /** Bytes one allocation's flows may buffer: held packets, DTLS backlog, SCTP reassembly. */
    allocation_buffer_bytes: string;
    /** Bytes all flows together may buffer. */
    max_buffered_bytes: string;
  };
  /** The PCP server (RFC 6887) and its firewall path (README "PCP server"). */
  pcp: PcpConfig;
  admin: {
    /** http://address:port, or https://address:port with `tls`; beyond loopback TLS or `insecure`. */
    listen: string;
    /** At least MIN_ADMIN_TOKEN_LENGTH characters; null: generated once into DATA_DIR/admin-token. */
    token: string | null;
    /** PEM files: the admin API is served over HTTPS (admin.listen https://...). */
    tls: { cert: string | null; key: string | null };
    /** Allow plain http:// on a non-loopback admin.listen (the token then crosses the network in clear). */
    insecure: boolean;
  };
  users: UserEntry[];
  policy: {
    rules: string;
    /** Largest data-channel file transfer followed (a size like 100MiB): beyond it, reported over the limit. */
    max_file_bytes: string;
    /** A transfer with no announced size ends after this long without data (ms). */
    transfer_pause_ms: number;
  };
  /** DATA_DIR/events.jsonl rotation. */
  events: {
    max_bytes: string;
    keep: number;
    /** A copy of the EVE stream to Redis (Suricata's eve-log redis output); url null: off. */
    redis: { url: string | null; mode: 'list' | 'stream' | 'channel'; key: string; max_queue: number };
  };
  /**
   * Shared state (README "Cluster"): the SQLite store in DATA_DIR stays the embedded
   * default; with `redis` set the gateways of a cluster share users, quotas, blocks and
   * events through it (src/cluster/).
   */
  store: {
    /** redis://[user:password@]host:port/db; null: this gateway alone. */
    redis: string | null;
    /** This gateway's id in the cluster; null: hostname:first-TURN-port. */
    node_id: string | null;
    /** Prefix of every cluster key and channel. */
    key_prefix: string;
    /** How often local quota counts are pushed to Redis and cluster totals read back (ms). */
    sync_interval_ms: number;
  };
  /** Recordings under DATA_DIR/recordings: retention deletes oldest first. */
  recording: {
    max_age_days: number | null;
    max_bytes: string | null;
    flush_interval_ms: number;
    /** Container of recorded VP8 video: webm (browsers play it) or ivf (src/record/README.md). */
    video_container: 'webm' | 'ivf';
  };
  /** The gateway identity (key-escrow.md §1): PEM files, or null to make one in data_dir. */
  identity: { cert: string | null; key: string | null };
  /** Malware scanning of reassembled files (README "Malware scanning"); src/scan/. */
  scan: ScanConfig;
  /** The conferencing core (core.md; README "Conferencing core"); src/core/. */
  core: CoreConfig;
}

/** `core:` (contract.md: listen, pool, directory, max_connections_per_user, org, trust, peers, kerberos; the rest extends it). */
export interface CoreConfig {
  /** The director: http://127.0.0.1:8088 by default; beyond loopback https:// with core.tls (core.md §1). */
  listen: string;
  /** PEM files: the director is served over HTTPS (core.listen https://...). */
  tls: { cert: string | null; key: string | null };
  /** Front-end base URLs; []: one front end in-process. */
  pool: string[];
  /** Shared secret of director↔FE calls (at least 32 characters); null: generated into DATA_DIR/core-pool-secret. */
  pool_secret: string | null;
  /** ldap://host:389/dc=example,dc=org (users and groups); null: the gateway's own users. */
  directory: string | null;
  /** How core.directory is read: bind, attributes, cache (src/config/ldap.ts). */
  ldap: LdapConfig;
  /** core.md §4: signalling connections per user; the next one closes the oldest (4001). */
  max_connections_per_user: number;
  /** This core's organisation (authentication transfer, core.md §6). */
  org: string | null;
  /** Certificate login (core.md §5): roots the chains lead to; CRL files (PEM or DER) checked for revocation (src/core/x509-crl.ts). */
  trust: { roots: string[]; crls: string[] };
  peers: CorePeer[];
  /**
   * The core's ECDSA P-256 signing key and certificate, PEM files (core.md §6: transfer
   * tickets; GET /v1/core/certificate); null: made self-signed into DATA_DIR at first start
   * (src/core/core-signing.ts).
   */
  signing: { cert: string | null; key: string | null };
  /** Negotiate login (RFC 4559): keytab, service, realm (src/config/kerberos.ts). */
  kerberos: KerberosConfig;
  /** Lifetime of core tokens, seconds (core.md §2: default 1 h). */
  token_ttl: number;
  /** Lifetime of the TURN REST credentials the core hands out, seconds (core.md §8). */
  turn_ttl: number;
}

export interface CorePeer {
  org: string;
  cert: string;
  allow: { users: string[]; groups: string[] };
}

/** `pcp:` (contract.md: listen, external_address; the rest extends it, README "PCP server"). */
export interface PcpConfig {
  /** udp:// addresses on the internal side; [] turns the PCP server off. */
  listen: string[];
  /** The address MAP and PEER assign (RFC 6887 §11.3); null: the default route's source address. */
  external_address: string | null;
  /** RFC 6887 §15: lifetimes asked for are clamped to [min_lifetime, max_lifetime], seconds. */
  min_lifetime: number;
  max_lifetime: number;
  /** Mappings per PCP client (NO_RESOURCES beyond, §7.4) and requests per client per second. */
  max_mappings_per_client: number;
  request_rate_per_client: number;
  /** Clients (CIDRs) allowed THIRD_PARTY (RFC 6887 §13.1); others get NOT_AUTHORIZED. */
  third_party: string[];
  /**
   * How mappings become real: nftables (kernel NAT, filter and NFQUEUE), auto (nftables where
   * this machine can program it), none (the default: the host's firewall is never touched
   * unless asked; every mapping is refused with NO_RESOURCES).
   */
  firewall: 'auto' | 'nftables' | 'none';
  /** Interfaces on the internal side whose new outbound traffic the gatehouse forward chain lets through (not inspected); []: only mapped flows pass. */
  internal_interfaces: string[];
  /** The NFQUEUE the mapped flows pass through (iptables -j NFQUEUE, the gateway reads it). */
  nfqueue: {
    queue: number;
    /** When the gateway is not reading the queue: true lets packets through (kernel fail-open), false drops. */
    fail_open: boolean;
    /** Packets whose verdict is delayed (held) at once; beyond, the oldest is dropped. */
    max_held: number;
  };
  /** RFC 7652 authentication. */
  auth: {
    /** Common requests without a PCP security association get AUTHENTICATION_REQUIRED. */
    required: boolean;
    /** builtin: EAP-TLS here with identity.cert; radius: EAP passed to a RADIUS server (RFC 3579). */
    eap: 'builtin' | 'radius';
    /** PEM files: the roots client certificates must chain to (builtin EAP-TLS). */
    ca: string[];
    /** PA lifetime, seconds (RFC 7652 SESSION_LIFETIME). */
    lifetime: number;
    radius: { server: string | null; secret: string | null; timeout_ms: number };
  };
}

/** `scan:` — an ICAP service (RFC 3507) and/or clamd INSTREAM; null: not configured. */
export interface ScanConfig {
  /** icap://host:port/service (RFC 3507 §4.2: default port 1344). */
  icap: string | null;
  /** tcp://host:port or unix:/path of a clamd socket. */
  clamd: string | null;
  /** Per-file deadline of a scan, milliseconds; beyond it the scan is an error. */
  timeout_ms: number;
  /** An error or time-out passes the file (true) or blocks it as unscanned (false). */
  fail_open: boolean;
  /** Scans in flight at once per scanner; more wait in a queue. */
  max_concurrent: number;
}

export const LISTEN_RE = /^(udp|tcp|tls):\/\/(\[[0-9a-fA-F:.]+\]|[0-9.]+|localhost):(\d{1,5})$/;

export function parseListen(url: string): { proto: 'udp' | 'tcp' | 'tls'; host: string; port: number } {
  const m = LISTEN_RE.exec(url);
  if (!m) throw new Error(`not a listen address: ${url}`);
  let host = m[2]!;
  if (host.startsWith('[')) host = host.slice(1, -1);
  if (host === 'localhost') host = '127.0.0.1';
  return { proto: m[1] as 'udp' | 'tcp' | 'tls', host, port: Number(m[3]) };
}

/** Shortest admin token accepted (configured or in DATA_DIR/admin-token); generated ones are 43 (256 bits). */
export const MIN_ADMIN_TOKEN_LENGTH = 32;

/** RFC 8489 §14.14: SOFTWARE is fewer than 128 characters, at most 763 bytes of UTF-8. */
export const MAX_SOFTWARE_CHARS = 127;
export const MAX_SOFTWARE_BYTES = 763;

export const ADMIN_LISTEN_RE = /^(https?):\/\/(\[[0-9a-fA-F:.]+\]|[0-9.]+|localhost):(\d{1,5})$/;

/** admin.listen split into scheme, host (brackets removed; localhost as 127.0.0.1) and port. */
export function parseAdminListen(url: string): { scheme: 'http' | 'https'; host: string; port: number } {
  const m = ADMIN_LISTEN_RE.exec(url);
  if (!m) throw new Error(`not an admin listen address: ${url}`);
  let host = m[2]!;
  if (host.startsWith('[')) host = host.slice(1, -1);
  if (host === 'localhost') host = '127.0.0.1';
  return { scheme: m[1] as 'http' | 'https', host, port: Number(m[3]) };
}

/** 127.0.0.0/8, ::1 and their IPv4-mapped form: addresses only this host can connect to. */
export function isLoopbackHost(host: string): boolean {
  const h = host.toLowerCase();
  if (h === 'localhost' || h === '::1' || h === '0:0:0:0:0:0:0:1') return true;
  const v4 = h.startsWith('::ffff:') ? h.slice(7) : h;
  return isIP(v4) === 4 && v4.startsWith('127.');
}

const listenUrl = checked('a listen address like udp://0.0.0.0:3478', (s) => {
  const m = LISTEN_RE.exec(s);
  if (!m) return `expected proto://address:port with proto udp, tcp or tls, got ${JSON.stringify(s)}`;
  const host = m[2]!.replace(/^\[|\]$/g, '');
  if (host !== 'localhost' && !isIP(host)) return `${JSON.stringify(host)} is not an IP address`;
  const port = Number(m[3]);
  if (port < 1 || port > 65535) return `port ${port} is out of range 1-65535`;
  return null;
});

export function checkCidr(s: string): string | null {
  const [addr, bits, ...rest] = s.split('/');
  const fam = isIP(addr ?? '');
  if (!fam || rest.length) return `${JSON.stringify(s)} is not an address or CIDR`;
  if (bits === undefined) return null;
  const n = Number(bits);
  const max = fam === 4 ? 32 : 128;
  if (!/^\d+$/.test(bits) || n > max) return `prefix length in ${JSON.stringify(s)} must be 0-${max}`;
  return null;
}

const cidr = checked('a CIDR like 10.0.0.0/8', checkCidr);
const ipAddr = checked('an IP address', (s) => (isIP(s) ? null : `${JSON.stringify(s)} is not an IP address`));

const portRange: Schema<number[]> = {
  what: 'a port range [low, high]',
  parse(node, path, ctx) {
    // Relay ports are unprivileged (1024-65535): a relay never takes a well-known port.
    const r = list(int(1024, 65535, 'a port 1024-65535')).parse(node, path, ctx);
    if (r.length !== 2 || r[0]! > r[1]!) {
      return fail(ctx, node, path, `expected [low, high] with low <= high`);
    }
    return r;
  },
};

const userFields = obj<UserEntry>(
  {
    name: {
      // ':' separates a TURN REST username's EXPIRY (src/turn/auth.ts); '/' marks the core's
      // guest names (`guest/CONFERENCE/IDENTITY`, core.md §8), which no user may imitate.
      schema: checked('a user name', (s) =>
        // eslint-disable-next-line no-control-regex
        s.length && !/[:/\u0000-\u001f\u007f]/.test(s) ? null : 'user names are non-empty and contain no ":", "/" or control character',
      ),
      default: () => '',
    },
    password: { schema: str('a password'), default: () => '' },
    groups: { schema: list(str('a group name')), default: () => [] },
  },
  'a user { name, password, groups }',
);

/** One user: a name and a non-empty password are required (never echoed in errors). */
const userSchema: Schema<UserEntry> = {
  what: userFields.what,
  parse(node, path, ctx) {
    const u = userFields.parse(node, path, ctx);
    if (!u.name) fail(ctx, node, `${path}.name`, 'a user needs a name');
    if (!u.password) {
      const at = nodeAt(node, 'password');
      fail(ctx, at.exact ? at.node : node, `${path}.password`, 'passwords must not be empty');
    }
    return u;
  },
};

/** Users; a name may appear once (the error is at the second occurrence). */
const usersSchema: Schema<UserEntry[]> = {
  what: 'a list of users',
  parse(node, path, ctx) {
    const users = list(userSchema).parse(node, path, ctx);
    const first = new Map<string, number>();
    users.forEach((u, i) => {
      // RFC 8489 §14.3: user names are compared after OpaqueString (RFC 8265), which
      // normalises to NFC; two spellings of one name would be one user.
      const key = u.name.normalize('NFC');
      const prev = first.get(key);
      if (prev !== undefined) {
        fail(
          ctx,
          nodeAt(node, `[${i}].name`).node,
          `${path}[${i}].name`,
          `user ${JSON.stringify(u.name)} is already defined at ${path}[${prev}]`,
        );
      }
      first.set(key, i);
    });
    return users;
  },
};

/** redis://[user:password@]host[:port][/db] or rediss:// (TLS), as ioredis reads it. */
export function checkRedisUrl(s: string): string | null {
  let u: URL;
  try {
    u = new URL(s);
  } catch {
    return 'expected redis://host:port/db';
  }
  if (u.protocol !== 'redis:' && u.protocol !== 'rediss:')
    return `expected the redis:// or rediss:// scheme, got ${JSON.stringify(u.protocol.replace(/:$/, ''))}`;
  if (!u.hostname) return 'a Redis URL needs a host';
  if (u.pathname !== '' && u.pathname !== '/' && !/^\/\d{1,2}$/.test(u.pathname))
    return 'the path of a Redis URL is a database number, e.g. /0';
  return null;
}

/** icap://host[:port]/service (RFC 3507 §4.2); no user info (no secrets in the URL). */
export function checkIcapUrl(s: string): string | null {
  let u: URL;
  try {
    u = new URL(s);
  } catch {
    return `expected icap://host:port/service, got ${JSON.stringify(s)}`;
  }
  if (u.protocol !== 'icap:') return `expected the icap:// scheme, got ${JSON.stringify(u.protocol.replace(/:$/, ''))}`;
  if (!u.hostname) return 'an ICAP URL needs a host';
  if (u.username || u.password) return 'an ICAP URL carries no user or password';
  if (u.pathname === '' || u.pathname === '/') return 'an ICAP URL names a service, e.g. icap://127.0.0.1:1344/srv_clamav';
  return null;
}

/** tcp://host:port or unix:/absolute/path. */
export function checkClamdUrl(s: string): string | null {
  if (s.startsWith('unix:')) {
    const path = s.slice(5);
    return path.startsWith('/') ? null : `expected unix:/absolute/path, got ${JSON.stringify(s)}`;
  }
  const m = /^tcp:\/\/(\[[0-9a-fA-F:.]+\]|[^:/\s]+):(\d{1,5})$/.exec(s);
  if (!m) return `expected tcp://host:port or unix:/path, got ${JSON.stringify(s)}`;
  const port = Number(m[2]);
  if (port < 1 || port > 65535) return `port ${port} is out of range 1-65535`;
  return null;
}

/** core.listen: http(s)://address:port (port 0: any free port, for tests). */
export const CORE_LISTEN_RE = ADMIN_LISTEN_RE;

export const DEFAULT_CORE_LISTEN = 'http://127.0.0.1:8088';

/** core.listen split like admin.listen. */
export function parseCoreListen(url: string): { scheme: 'http' | 'https'; host: string; port: number } {
  return parseAdminListen(url);
}

const corePeerSchema = obj<CorePeer>(
  {
    org: { schema: str('an organisation name'), default: () => '' },
    cert: { schema: str('a PEM certificate file'), default: () => '' },
    allow: {
      schema: obj({
        users: { schema: list(str('a user name')), default: () => [] },
        groups: { schema: list(str('a group name')), default: () => [] },
      }),
    },
  },
  'a peer { org, cert, allow: {users, groups} }',
);

/** Why turn.worker_user names no account workers can drop to, or null. */
function workerAccountProblem(user: string): string | null {
  try {
    const a = lookupAccount(user);
    return a.uid === 0 || a.gid === 0 ? `"${user}" is root: workers would drop nothing` : null;
  } catch (err) {
    return (err as Error).message;
  }
}

/** turn.workers: the most relay workers one gateway runs. */
export const MAX_TURN_WORKERS = 64;

/** turn.workers: `auto` (one per core, at most MAX_TURN_WORKERS) or a whole number 1-64. */
const workersSchema: Schema<number> = {
  what: `auto or a whole number from 1 to ${MAX_TURN_WORKERS}`,
  parse(node, path, ctx) {
    const v = isScalar(node) ? node.value : node;
    if (v === 'auto') return Math.min(MAX_TURN_WORKERS, Math.max(1, availableParallelism()));
    return int(1, MAX_TURN_WORKERS, this.what).parse(node, path, ctx);
  },
};

export const configSchema = obj<GatehouseConfig>({
  realm: { schema: str('a realm name'), default: () => 'gatehouse.local' },
  data_dir: { schema: str('a directory path'), default: () => './data' },
  timezone: {
    schema: checked('an IANA time zone like Europe/Berlin', (tz) => {
      try {
        new Intl.DateTimeFormat('en-US', { timeZone: tz });
        return null;
      } catch {
        return `unknown time zone ${JSON.stringify(tz)}`;
      }
    }),
    default: () => Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC',
  },
  log_level: {
    schema: oneOf('trace', 'debug', 'info', 'warn', 'error', 'silent'),
    default: () => 'info',
  },
  turn: {
    schema: obj({
      listen: { schema: list(listenUrl, { single: true }), default: () => ['udp://0.0.0.0:3478', 'tcp://0.0.0.0:3478'] },
      relay_address: { schema: ipAddr, default: () => '127.0.0.1' },
      public_address: { schema: nullable(ipAddr), default: () => null },
      relay_ports: { schema: portRange, default: () => [49152, 65535] },
      peers: {
        schema: obj({
          allow: { schema: list(cidr), default: () => [] },
          deny: { schema: list(cidr), default: () => [] },
        }),
      },
      rest_secret: { schema: nullable(str('a shared secret')), default: () => null },
      tls: {
        schema: obj({
          cert: { schema: nullable(str('a PEM file path')), default: () => null },
          key: { schema: nullable(str('a PEM file path')), default: () => null },
        }),
      },
      software: {
        schema: checked('a SOFTWARE string', (v) => {
          const chars = [...v].length;
          if (chars > MAX_SOFTWARE_CHARS) return `must be fewer than 128 characters (RFC 8489 §14.14), got ${chars}`;
          if (Buffer.byteLength(v, 'utf8') > MAX_SOFTWARE_BYTES)
            return `must be at most ${MAX_SOFTWARE_BYTES} bytes of UTF-8 (RFC 8489 §14.14)`;
          return null;
        }),
        default: () => 'Gatehouse',
      },
      max_lifetime: { schema: int(600, 86400), default: () => 3600 },
      default_lifetime: { schema: int(60, 86400), default: () => 600 },
      nonce_lifetime: { schema: int(10, 86400), default: () => 600 },
      max_allocations_per_user: { schema: int(1, 100000), default: () => 20 },
      max_allocations: { schema: nullable(int(0, 10_000_000)), default: () => null },
      channel_numbers: { schema: oneOf('rfc8656', 'rfc5766'), default: () => 'rfc8656' },
      max_permissions_per_allocation: { schema: int(1, 10000), default: () => 64 },
      max_channels_per_allocation: { schema: int(1, 4096), default: () => 64 },
      max_flows_per_user: { schema: int(1, 1_000_000), default: () => 1000 },
      max_flows: { schema: int(1, 10_000_000), default: () => 20000 },
      max_connections_per_source: { schema: int(1, 100_000), default: () => 64 },
      max_connections: { schema: int(1, 1_000_000), default: () => 10000 },
      connection_idle_timeout: { schema: int(5, 86400), default: () => 120 },
      allocate_rate_per_source: { schema: int(1, 100_000), default: () => 20 },
      unauthorized_rate_per_source: { schema: int(1, 100_000), default: () => 50 },
      fast_path: { schema: oneOf('off', 'auto'), default: () => 'off' },
      workers: { schema: workersSchema, default: () => 1 },
      worker_user: { schema: nullable(str('a local account: a user name, uid or uid:gid')), default: () => null },
    }),
  },
  gateway: {
    schema: obj({
      allocation_buffer_bytes: {
        schema: checked('a size like 4MiB', (v) =>
          /^\d+(?:\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?$/.test(v.trim())
            ? null
            : `expected a size like 4MiB, got ${JSON.stringify(v)}`,
        ),
        default: () => '4MiB',
      },
      max_buffered_bytes: {
        schema: checked('a size like 4MiB', (v) =>
          /^\d+(?:\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?$/.test(v.trim())
            ? null
            : `expected a size like 4MiB, got ${JSON.stringify(v)}`,
        ),
        default: () => '1GiB',
      },
    }),
  },
  pcp: {
    schema: obj({
      listen: {
        schema: list(
          checked('a udp:// listen address like udp://0.0.0.0:5351', (s) =>
            !LISTEN_RE.test(s)
              ? `expected udp://address:port, got ${JSON.stringify(s)}`
              : s.startsWith('udp://')
                ? null
                : 'PCP runs over UDP only (RFC 6887 §7)',
          ),
          { single: true },
        ),
        default: () => ['udp://0.0.0.0:5351'],
      },
      external_address: { schema: nullable(ipAddr), default: () => null },
      min_lifetime: { schema: int(1, 86400), default: () => 120 },
      max_lifetime: { schema: int(1, 7 * 86400), default: () => 86400 },
      max_mappings_per_client: { schema: int(1, 65535), default: () => 256 },
      request_rate_per_client: { schema: int(1, 100_000), default: () => 50 },
      third_party: { schema: list(cidr), default: () => [] },
      firewall: { schema: oneOf('auto', 'nftables', 'none'), default: () => 'none' },
      internal_interfaces: {
        schema: list(
          checked('an interface name like eth1', (s) =>
            /^[A-Za-z0-9._@:-]{1,15}$/.test(s) ? null : `${JSON.stringify(s)} is not an interface name`,
          ),
        ),
        default: () => [],
      },
      nfqueue: {
        schema: obj({
          queue: { schema: int(0, 65535), default: () => 7 },
          fail_open: { schema: bool(), default: () => false },
          max_held: { schema: int(1, 1_000_000), default: () => 4096 },
        }),
      },
      auth: {
        schema: obj({
          required: { schema: bool(), default: () => false },
          eap: { schema: oneOf('builtin', 'radius'), default: () => 'builtin' },
          ca: { schema: list(str('a PEM file path')), default: () => [] },
          lifetime: { schema: int(60, 7 * 86400), default: () => 3600 },
          radius: {
            schema: obj({
              server: {
                schema: nullable(
                  checked('a RADIUS server like udp://10.0.0.5:1812', (s) =>
                    /^udp:\/\/(\[[0-9a-fA-F:.]+\]|[0-9.]+):\d{1,5}$/.test(s)
                      ? null
                      : `expected udp://address:port, got ${JSON.stringify(s)}`,
                  ),
                ),
                default: () => null,
              },
              secret: { schema: nullable(str('a RADIUS shared secret')), default: () => null },
              timeout_ms: { schema: int(100, 60_000), default: () => 3000 },
            }),
          },
        }),
      },
    }),
  },
  admin: {
    schema: obj({
      listen: {
        schema: checked('an http(s)://address:port URL', (s) => {
          const m = ADMIN_LISTEN_RE.exec(s);
          if (!m) return `expected http://address:port or https://address:port, got ${JSON.stringify(s)}`;
          const host = m[2]!.replace(/^\[|\]$/g, '');
          if (host !== 'localhost' && !isIP(host)) return `${JSON.stringify(host)} is not an IP address`;
          const port = Number(m[3]);
          if (port > 65535) return `port ${port} is out of range 0-65535`;
          return null;
        }),
        default: () => 'http://127.0.0.1:8080',
      },
      token: {
        // Never echo the value: the problem names the rule only.
        schema: nullable(
          checked('an admin token', (s) => {
            if (/[\s\x00-\x1f\x7f]/.test(s)) return 'admin tokens contain no spaces or control characters';
            if (s.length < MIN_ADMIN_TOKEN_LENGTH)
              return `admin tokens are at least ${MIN_ADMIN_TOKEN_LENGTH} characters (e.g. openssl rand -base64url 32), or null to generate one`;
            return null;
          }),
        ),
        default: () => null,
      },
      tls: {
        schema: obj({
          cert: { schema: nullable(str('a PEM certificate file')), default: () => null },
          key: { schema: nullable(str('a PEM key file')), default: () => null },
        }),
      },
      insecure: { schema: bool(), default: () => false },
    }),
  },
  users: { schema: usersSchema, default: () => [] },
  events: {
    schema: obj({
      max_bytes: {
        schema: checked('a size like 100MiB', (v) =>
          /^\d+(?:\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?$/.test(v.trim())
            ? null
            : `expected a size like 100MiB, got ${JSON.stringify(v)}`,
        ),
        default: () => '100MiB',
      },
      keep: { schema: int(1, 1000), default: () => 5 },
      redis: {
        schema: obj({
          url: { schema: nullable(checked('a Redis URL like redis://127.0.0.1:6379/0', checkRedisUrl)), default: () => null },
          mode: { schema: oneOf('list', 'stream', 'channel'), default: () => 'list' },
          key: { schema: str('a Redis key'), default: () => 'gatehouse' },
          max_queue: { schema: int(1, 1_000_000, 'a number of events'), default: () => 10000 },
        }),
        default: () => ({ url: null, mode: 'list', key: 'gatehouse', max_queue: 10000 }),
      },
    }),
  },
  store: {
    schema: obj({
      redis: { schema: nullable(checked('a Redis URL like redis://127.0.0.1:6379/0', checkRedisUrl)), default: () => null },
      node_id: {
        schema: nullable(
          checked('a node id (letters, digits, . _ : -)', (v) =>
            /^[A-Za-z0-9._:-]{1,64}$/.test(v) ? null : `expected 1-64 letters, digits or . _ : -, got ${JSON.stringify(v)}`,
          ),
        ),
        default: () => null,
      },
      key_prefix: {
        schema: checked('a key prefix like gatehouse:', (v) =>
          /^[A-Za-z0-9._:{}-]{1,64}$/.test(v) ? null : `expected 1-64 letters, digits or . _ : { } -, got ${JSON.stringify(v)}`,
        ),
        default: () => 'gatehouse:',
      },
      sync_interval_ms: { schema: int(50, 10_000, 'milliseconds from 50 to 10000'), default: () => 250 },
    }),
  },
  recording: {
    schema: obj({
      max_age_days: { schema: nullable(int(1, 36500, 'a number of days')), default: () => null },
      max_bytes: {
        schema: nullable(
          checked('a size like 50GiB', (v) =>
            /^\d+(?:\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?$/.test(v.trim())
              ? null
              : `expected a size like 50GiB, got ${JSON.stringify(v)}`,
          ),
        ),
        default: () => null,
      },
      flush_interval_ms: { schema: int(50, 60_000), default: () => 1000 },
      video_container: { schema: oneOf('webm', 'ivf'), default: () => 'webm' },
    }),
  },
  identity: {
    schema: obj({
      cert: { schema: nullable(str('a PEM certificate file')), default: () => null },
      key: { schema: nullable(str('a PEM ECDSA P-256 key file')), default: () => null },
    }),
  },
  scan: {
    schema: obj({
      icap: {
        schema: nullable(checked('an ICAP URL like icap://127.0.0.1:1344/srv_clamav', checkIcapUrl)),
        default: () => null,
      },
      clamd: {
        schema: nullable(checked('a clamd address like tcp://127.0.0.1:3310 or unix:/run/clamav/clamd.ctl', checkClamdUrl)),
        default: () => null,
      },
      timeout_ms: { schema: int(100, 600_000, 'milliseconds from 100 to 600000'), default: () => 10_000 },
      fail_open: { schema: bool(), default: () => false },
      max_concurrent: { schema: int(1, 1024), default: () => 4 },
    }),
  },
  core: {
    schema: obj({
      listen: {
        schema: checked('an http(s)://address:port URL', (s) => {
          const m = CORE_LISTEN_RE.exec(s);
          if (!m) return `expected http://address:port or https://address:port, got ${JSON.stringify(s)}`;
          const host = m[2]!.replace(/^\[|\]$/g, '');
          if (host !== 'localhost' && !isIP(host)) return `${JSON.stringify(host)} is not an IP address`;
          const port = Number(m[3]);
          if (port > 65535) return `port ${port} is out of range 0-65535`;
          return null;
        }),
        default: () => DEFAULT_CORE_LISTEN,
      },
      tls: {
        schema: obj({
          cert: { schema: nullable(str('a PEM certificate file')), default: () => null },
          key: { schema: nullable(str('a PEM key file')), default: () => null },
        }),
      },
      pool: {
        schema: list(
          checked('a front-end base URL like https://fe1.example:8089', (s) =>
            /^https?:\/\/[^\s/]+(:\d{1,5})?\/?$/.test(s) ? null : `expected http(s)://host:port, got ${JSON.stringify(s)}`,
          ),
        ),
        default: () => [],
      },
      pool_secret: {
        // Never echo the value.
        schema: nullable(
          checked('a pool secret', (s) =>
            s.length >= 32 && !/[\s\x00-\x1f\x7f]/.test(s) ? null : 'pool secrets are at least 32 characters, no spaces',
          ),
        ),
        default: () => null,
      },
      directory: {
        schema: nullable(
          checked('an LDAP URL like ldap://host:389/dc=example,dc=org', (s) =>
            /^ldaps?:\/\/[^\s/]+(\/.*)?$/.test(s) ? null : `expected ldap://host:port/base-dn, got ${JSON.stringify(s)}`,
          ),
        ),
        default: () => null,
      },
      ldap: { schema: ldapConfigSchema },
      max_connections_per_user: { schema: int(1, 1000), default: () => 3 },
      org: { schema: nullable(str('an organisation name')), default: () => null },
      trust: {
        schema: obj({
          roots: { schema: list(str('a PEM file path')), default: () => [] },
          crls: { schema: list(str('a CRL file path (PEM or DER)')), default: () => [] },
        }),
      },
      peers: { schema: list(corePeerSchema), default: () => [] },
      signing: {
        schema: obj({
          cert: { schema: nullable(str('a PEM certificate file')), default: () => null },
          key: { schema: nullable(str('a PEM key file')), default: () => null },
        }),
      },
      kerberos: { schema: kerberosConfigSchema },
      token_ttl: { schema: int(60, 86400, 'seconds from 60 to 86400'), default: () => 3600 },
      turn_ttl: { schema: int(60, 86400, 'seconds from 60 to 86400'), default: () => 600 },
    }),
  },
  policy: {
    schema: obj({
      rules: { schema: str('a file or folder path'), default: () => './rules' },
      // Issue 9: whole-file transfers over data channels (src/inspect/transfer.ts).
      max_file_bytes: {
        schema: checked('a size like 100MiB', (v) => {
          const m = /^(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?$/.exec(v.trim());
          if (!m) return `expected a size like 100MiB, got ${JSON.stringify(v)}`;
          const unit: Record<string, number> = {
            B: 1,
            KB: 1e3,
            MB: 1e6,
            GB: 1e9,
            TB: 1e12,
            KiB: 1024,
            MiB: 1024 ** 2,
            GiB: 1024 ** 3,
            TiB: 1024 ** 4,
          };
          const n = Number(m[1]) * unit[m[2] ?? 'B']!;
          return n >= 1024 && n <= 1024 ** 4 ? null : 'must be from 1KiB to 1TiB';
        }),
        default: () => '100MiB',
      },
      transfer_pause_ms: { schema: int(50, 600_000, 'a number of milliseconds from 50 to 600000'), default: () => 2000 },
    }),
  },
});

/** Cross-key checks that a per-key schema cannot express; `at` locates the offending key. */
function crossCheck(cfg: GatehouseConfig, at: (paths: string | string[], problem: string) => never): void {
  if (cfg.turn.default_lifetime > cfg.turn.max_lifetime) {
    at(
      ['turn.default_lifetime', 'turn.max_lifetime'],
      `turn.default_lifetime (${cfg.turn.default_lifetime}) exceeds turn.max_lifetime (${cfg.turn.max_lifetime})`,
    );
  }
  if (cfg.pcp.min_lifetime > cfg.pcp.max_lifetime) {
    at(
      ['pcp.min_lifetime', 'pcp.max_lifetime'],
      `pcp.min_lifetime (${cfg.pcp.min_lifetime}) exceeds pcp.max_lifetime (${cfg.pcp.max_lifetime})`,
    );
  }
  if (cfg.pcp.auth.eap === 'radius' && (!cfg.pcp.auth.radius.server || !cfg.pcp.auth.radius.secret)) {
    at(
      cfg.pcp.auth.radius.server ? 'pcp.auth.radius.secret' : 'pcp.auth.radius.server',
      'pcp.auth.eap: radius needs pcp.auth.radius.server and pcp.auth.radius.secret',
    );
  }
  if (!cfg.identity.cert !== !cfg.identity.key) {
    at(cfg.identity.cert ? 'identity.cert' : 'identity.key', 'identity.cert and identity.key must be set together');
  }
  // RFC 8656 §7.2: the relayed transport address goes to the client in XOR-RELAYED-ADDRESS,
  // so it must be an address peers can reach, never the unspecified address.
  if (cfg.turn.relay_address === '0.0.0.0' || cfg.turn.relay_address === '::') {
    at('turn.relay_address', `must be the address peers reach this server on, not ${cfg.turn.relay_address}`);
  }
  if (cfg.turn.workers > 1) {
    // Quotas, blocks and users hold on every worker only through the cluster's Redis
    // (src/cluster): each worker is a cluster node (README "Relay workers").
    if (!cfg.store.redis)
      at(
        'turn.workers',
        `${cfg.turn.workers} workers share quotas, blocks and users through store.redis: set store.redis, or turn.workers: 1`,
      );
    const ports = cfg.turn.relay_ports[1]! - cfg.turn.relay_ports[0]! + 1;
    if (ports < cfg.turn.workers)
      at(
        ['turn.workers', 'turn.relay_ports'],
        `${cfg.turn.workers} workers need at least as many relay ports; turn.relay_ports has ${ports}`,
      );
    if (!cfg.turn.listen.some((l) => l.startsWith('udp://')))
      at('turn.workers', 'relay workers share the udp:// listeners of turn.listen: name at least one');
  }
  if (cfg.turn.worker_user !== null) {
    // Workers drop to this account before they start serving (src/cli/relay-worker.ts):
    // worker 0's own listeners must then be bindable without root, and the firewall
    // backend (nftables, NFQUEUE) needs root (CAP_NET_ADMIN) it no longer has.
    if (cfg.turn.workers < 2) at('turn.worker_user', 'applies to relay workers only: set turn.workers to 2 or more (or auto)');
    const account = workerAccountProblem(cfg.turn.worker_user);
    if (account) at('turn.worker_user', account);
    for (const [key, { port }] of [
      ['admin.listen', parseAdminListen(cfg.admin.listen)],
      ['core.listen', parseCoreListen(cfg.core.listen)],
    ] as const) {
      if (port > 0 && port < 1024)
        at(
          [key, 'turn.worker_user'],
          `port ${port} needs root, which workers drop (turn.worker_user): use a port from 1024, or a redirect`,
        );
    }
    if (cfg.pcp.listen.length > 0 && cfg.pcp.firewall !== 'none')
      at(
        ['pcp.firewall', 'turn.worker_user'],
        'the firewall backend needs root, which workers drop (turn.worker_user): set pcp.firewall: none',
      );
  }
  const tlsAt = cfg.turn.listen.findIndex((l) => l.startsWith('tls://'));
  if (tlsAt >= 0 && (!cfg.turn.tls.cert || !cfg.turn.tls.key)) {
    const listenPath = cfg.turn.listen.length === 1 ? ['turn.listen[0]', 'turn.listen'] : [`turn.listen[${tlsAt}]`];
    at(listenPath, 'a tls:// address needs turn.tls.cert and turn.tls.key (PEM files)');
  }
  const admin = parseAdminListen(cfg.admin.listen);
  const adminTls = !!(cfg.admin.tls.cert || cfg.admin.tls.key);
  if (adminTls && (!cfg.admin.tls.cert || !cfg.admin.tls.key)) {
    at(cfg.admin.tls.cert ? 'admin.tls.cert' : 'admin.tls.key', 'admin.tls.cert and admin.tls.key must be set together');
  }
  if (admin.scheme === 'https' && !adminTls)
    at('admin.listen', 'an https:// admin listener needs admin.tls.cert and admin.tls.key (PEM files)');
  if (admin.scheme === 'http' && adminTls)
    at(['admin.tls.cert', 'admin.tls'], 'admin.tls is set: write admin.listen as https://address:port');
  // The admin token is a bearer credential (RFC 6750 §5.3: only over TLS): beyond
  // loopback it must not cross the network in clear unless the operator says so.
  if (!isLoopbackHost(admin.host) && admin.scheme !== 'https' && !cfg.admin.insecure) {
    at(
      'admin.listen',
      `${admin.host} is not a loopback address: serve https:// with admin.tls (cert, key), or set admin.insecure: true to send the admin token in clear`,
    );
  }
}

/** core.md §1: plain HTTP only on loopback; https:// needs core.tls. */
function coreCheck(cfg: GatehouseConfig, at: (paths: string | string[], problem: string) => never): void {
  const core = parseCoreListen(cfg.core.listen);
  const tls = !!(cfg.core.tls.cert || cfg.core.tls.key);
  if (tls && (!cfg.core.tls.cert || !cfg.core.tls.key)) {
    at(cfg.core.tls.cert ? 'core.tls.cert' : 'core.tls.key', 'core.tls.cert and core.tls.key must be set together');
  }
  if (core.scheme === 'https' && !tls) at('core.listen', 'an https:// core listener needs core.tls.cert and core.tls.key (PEM files)');
  if (core.scheme === 'http' && tls) at(['core.tls.cert', 'core.tls'], 'core.tls is set: write core.listen as https://address:port');
  if (!isLoopbackHost(core.host) && core.scheme !== 'https') {
    at(
      'core.listen',
      `${core.host} is not a loopback address: the director serves https:// beyond loopback (core.md §1): set core.tls (cert, key)`,
    );
  }
  ldapCheck(cfg.core, at);
  // Basic login and the service bind send passwords to the directory: never in the clear
  // beyond loopback unless the admin says so (RFC 4513 §5.1.2, §6.3.1; like admin.insecure).
  if (cfg.core.directory?.startsWith('ldap://') && !cfg.core.ldap.starttls && !cfg.core.ldap.insecure) {
    const host = new URL(cfg.core.directory.replace(/^ldap:/, 'http:')).hostname.replace(/^\[|\]$/g, '');
    if (!isLoopbackHost(host))
      at(
        'core.directory',
        `${host} is not a loopback address: use ldaps:// or core.ldap.starttls: true (passwords would cross the network in the clear), or set core.ldap.insecure: true`,
      );
  }
  cfg.core.peers.forEach((p, i) => {
    if (!p.org) at(`core.peers[${i}]`, 'a peer needs an org');
    if (!p.cert) at(`core.peers[${i}]`, 'a peer needs a cert (PEM file)');
    // core.md §6: B picks the one certificate it trusts for the ticket's organisation.
    if (cfg.core.peers.findIndex((q) => q.org === p.org) !== i)
      at(`core.peers[${i}].org`, `${JSON.stringify(p.org)} is named by an earlier peer too`);
    // A peer is another organisation's core: its tickets for core.org would be our own users.
    if (p.org && p.org === cfg.core.org) at(`core.peers[${i}].org`, `${JSON.stringify(p.org)} is this core's own core.org`);
  });
  if (!!cfg.core.signing.cert !== !!cfg.core.signing.key) {
    at(cfg.core.signing.cert ? 'core.signing.cert' : 'core.signing.key', 'core.signing.cert and core.signing.key must be set together');
  }
}

export function parseConfig(text: string, file = '<config>'): GatehouseConfig {
  const { root, ctx } = parseYaml(text, file);
  const cfg = configSchema.parse(root, '', ctx);
  crossCheck(cfg, (paths, problem) => failAtPath(ctx, root, paths, problem));
  coreCheck(cfg, (paths, problem) => failAtPath(ctx, root, paths, problem));
  return cfg;
}

export function loadConfig(file: string | null): GatehouseConfig {
  if (!file) return defaultConfig();
  return parseConfig(readFileSync(file, 'utf8'), file);
}

/** The embedded default: what `npm start` runs with no file. */
export function defaultConfig(): GatehouseConfig {
  return parseConfig('', '<embedded default>');
}
