// A throwaway OpenLDAP slapd (Debian's slapd) for the directory tests: a slapd.conf in a
// temp dir (mdb backend, core/cosine/inetorgperson schemas, the memberof overlay so
// users get memberOf from their groupOfNames), on loopback (ldap:// and, with a
// certificate, ldaps://), run in the foreground (-d 0), never the system service. Entries
// are loaded with ldapadd as the rootdn after start (so memberof maintains memberOf);
// ldapmodify changes them while the test runs.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { connect } from 'node:net';
import { findProgram } from './require-peer.js';

export interface SlapdUser {
  uid: string;
  password: string;
  /** Organisation (attribute o). */
  o?: string;
}

export interface SlapdGroup {
  cn: string;
  members: string[]; // uids
}

export interface Slapd {
  base: string;
  ldapUrl: string;
  /** ldaps://127.0.0.1:PORT when started with tls. */
  ldapsUrl: string | null;
  /** The service account the core binds with. */
  bindDn: string;
  bindPassword: string;
  userDn(uid: string): string;
  groupDn(cn: string): string;
  /** ldapmodify as the rootdn (LDIF text). */
  modify(ldif: string): void;
  /** Stops slapd (SIGTERM) and waits; its data stays until cleanup(). */
  stop(): Promise<void>;
  /** Starts it again on the same ports and data. */
  start(): Promise<void>;
  output(): string;
  cleanup(): Promise<void>;
}

const BASE = 'dc=example,dc=org';

/** An RDN value written into a DN (RFC 4514 §2.4, the specials only: test names are plain). */
const rdn = (v: string) => v.replace(/[,+"\\<>;]/g, (c) => '\\' + c);

function ldif(users: SlapdUser[], groups: SlapdGroup[], bindPassword: string): string {
  const out: string[] = [
    `dn: ${BASE}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: example.org\n`,
    `dn: ou=people,${BASE}\nobjectClass: organizationalUnit\nou: people\n`,
    `dn: ou=groups,${BASE}\nobjectClass: organizationalUnit\nou: groups\n`,
    `dn: ou=services,${BASE}\nobjectClass: organizationalUnit\nou: services\n`,
    `dn: cn=gatehouse,ou=services,${BASE}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\ncn: gatehouse\nuserPassword: ${bindPassword}\n`,
  ];
  for (const u of users)
    out.push(
      `dn: uid=${u.uid},ou=people,${BASE}\nobjectClass: inetOrgPerson\nuid: ${u.uid}\ncn: ${u.uid}\nsn: ${u.uid}\n` +
        `${u.o ? `o: ${u.o}\n` : ''}userPassword: ${u.password}\n`,
    );
  for (const g of groups)
    out.push(
      `dn: cn=${rdn(g.cn)},ou=groups,${BASE}\nobjectClass: groupOfNames\ncn: ${g.cn}\n` +
        // groupOfNames needs a member (RFC 4519 §3.5): an empty group names the base.
        (g.members.length ? g.members.map((m) => `member: uid=${m},ou=people,${BASE}\n`).join('') : `member: ${BASE}\n`),
    );
  return out.join('\n');
}

async function tcpUp(port: number): Promise<boolean> {
  return new Promise((r) => {
    const s = connect(port, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      r(true);
    });
    s.once('error', () => r(false));
  });
}

export async function startSlapd(opts: {
  users: SlapdUser[];
  groups: SlapdGroup[];
  ports: { ldap: number; ldaps?: number };
  tls?: { cert: string; key: string };
  /** Log every operation (slapd's `stats` level, 256) to output(): BIND, SRCH, RESULT lines. */
  stats?: boolean;
}): Promise<Slapd> {
  const slapd = findProgram('slapd');
  if (!slapd) throw new Error('slapd is not installed (Debian package slapd)');
  const dir = mkdtempSync(join(tmpdir(), 'gatehouse-slapd-'));
  const db = join(dir, 'db');
  mkdirSync(db);
  const rootPw = randomBytes(12).toString('base64url');
  const bindPassword = 'svc-' + randomBytes(12).toString('base64url');
  const rootDn = `cn=admin,${BASE}`;
  const conf = [
    'include /etc/ldap/schema/core.schema',
    'include /etc/ldap/schema/cosine.schema',
    'include /etc/ldap/schema/inetorgperson.schema',
    `pidfile ${join(dir, 'slapd.pid')}`,
    `argsfile ${join(dir, 'slapd.args')}`,
    'modulepath /usr/lib/ldap',
    'moduleload back_mdb',
    'moduleload memberof',
    ...(opts.tls ? [`TLSCertificateFile ${opts.tls.cert}`, `TLSCertificateKeyFile ${opts.tls.key}`] : []),
    'database mdb',
    `suffix "${BASE}"`,
    `rootdn "${rootDn}"`,
    `rootpw ${rootPw}`,
    `directory ${db}`,
    'maxsize 10485760',
    'overlay memberof',
    // Users may bind (auth) but not read passwords; the service account reads the rest.
    'access to attrs=userPassword by anonymous auth by * none',
    'access to * by dn.exact="cn=gatehouse,ou=services,dc=example,dc=org" read by self read by * none',
    '',
  ].join('\n');
  const confFile = join(dir, 'slapd.conf');
  writeFileSync(confFile, conf);
  const urls = [`ldap://127.0.0.1:${opts.ports.ldap}/`, ...(opts.ports.ldaps ? [`ldaps://127.0.0.1:${opts.ports.ldaps}/`] : [])];
  let child: ChildProcess | null = null;
  let out = '';
  const start = async () => {
    out += `--- start\n`;
    // -d 0: stay in the foreground (no detach), no debug output; 256 (stats): one line per operation.
    const c = spawn(slapd, ['-f', confFile, '-h', urls.join(' '), '-d', opts.stats ? '256' : '0'], { stdio: ['ignore', 'pipe', 'pipe'] });
    child = c;
    c.stdout!.on('data', (b: Buffer) => (out += b.toString()));
    c.stderr!.on('data', (b: Buffer) => (out += b.toString()));
    process.once('exit', () => c.kill('SIGKILL'));
    const deadline = Date.now() + 15_000;
    while (!(await tcpUp(opts.ports.ldap))) {
      if (c.exitCode !== null || c.signalCode !== null) throw new Error(`slapd ended (${c.exitCode ?? c.signalCode}):\n${out}`);
      if (Date.now() > deadline) throw new Error(`slapd did not listen:\n${out}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  };
  const ldapTool = (tool: string, text: string) => {
    const r = spawnSync(tool, ['-x', '-H', urls[0]!, '-D', rootDn, '-w', rootPw], { input: text, encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`${tool} failed (${r.status}): ${r.stderr}`);
  };
  try {
    await start();
    ldapTool('ldapadd', ldif(opts.users, opts.groups, bindPassword));
  } catch (e) {
    (child as ChildProcess | null)?.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
  const stop = async () => {
    const c = child;
    child = null;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const done = new Promise<void>((r) => c.once('exit', () => r()));
    c.kill('SIGTERM');
    const k = setTimeout(() => c.kill('SIGKILL'), 5000);
    await done;
    clearTimeout(k);
  };
  return {
    base: BASE,
    ldapUrl: `ldap://127.0.0.1:${opts.ports.ldap}`,
    ldapsUrl: opts.ports.ldaps ? `ldaps://127.0.0.1:${opts.ports.ldaps}` : null,
    bindDn: `cn=gatehouse,ou=services,${BASE}`,
    bindPassword,
    userDn: (uid) => `uid=${uid},ou=people,${BASE}`,
    groupDn: (cn) => `cn=${rdn(cn)},ou=groups,${BASE}`,
    modify: (text) => ldapTool('ldapmodify', text),
    stop,
    start,
    output: () => out,
    async cleanup() {
      await stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
