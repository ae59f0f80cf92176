// A throwaway MIT Kerberos realm for end-to-end tests: krb5.conf and kdc.conf in a temp
// dir (KRB5_CONFIG, KRB5_KDC_PROFILE), the database made with `kdb5_util create -s`,
// principals with `kadmin.local addprinc`, keytabs with `ktadd`, and krb5kdc in the
// foreground (-n) on a free loopback port. Nothing outside the temp dir is touched
// (ccaches are files in it too; the acceptor's replay cache goes to KRB5RCACHEDIR there).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createConnection } from 'node:net';
import { randomBytes } from 'node:crypto';
import { findProgram } from './require-peer.js';
import { freePort } from './ports.js';

export interface Realm {
  realm: string;
  dir: string;
  kdcPort: number;
  /** KRB5_CONFIG, KRB5_KDC_PROFILE, KRB5RCACHEDIR for anything that uses this realm. */
  env: Record<string, string>;
  /** kadmin.local -q QUERY (throws with its output on failure). */
  kadmin(query: string): string;
  addUser(name: string, password: string): void;
  /** addprinc -randkey PRINCIPAL and ktadd it into a keytab file in the temp dir. */
  keytab(file: string, ...principals: string[]): string;
  /** kinit NAME with the password on stdin into a new ccache file; returns KRB5CCNAME. */
  kinit(name: string, password: string, opts?: { lifetime?: string; ccache?: string }): string;
  kdcLog(): string;
  stop(): Promise<void>;
}

function run(bin: string, args: string[], env: NodeJS.ProcessEnv, input?: string): string {
  const r = spawnSync(findProgram(bin) ?? bin, args, { env, input, encoding: 'utf8', timeout: 30_000 });
  const out = `${r.stdout ?? ''}${r.stderr ?? ''}`;
  if (r.status !== 0) throw new Error(`${bin} ${args.join(' ')} failed (${r.status ?? r.signal}): ${out}`);
  return out;
}

async function waitTcp(port: number, ms: number): Promise<void> {
  const end = Date.now() + ms;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = createConnection({ host: '127.0.0.1', port }, () => {
        s.destroy();
        resolve(true);
      });
      s.on('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > end) throw new Error(`krb5kdc did not listen on 127.0.0.1:${port}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * A realm with `clockskew` seconds of allowed skew (krb5.conf libdefaults; MIT's default
 * is 300), host names taken literally (no DNS canonicalisation, no reverse lookups).
 */
export async function startRealm(opts: { realm?: string; clockskew?: number } = {}): Promise<Realm> {
  const realm = opts.realm ?? 'GATEHOUSE.TEST';
  const dir = mkdtempSync(join(tmpdir(), 'gh-krb5-'));
  const kdcPort = await freePort('tcp');
  const krb5conf = join(dir, 'krb5.conf');
  const kdcconf = join(dir, 'kdc.conf');
  writeFileSync(
    krb5conf,
    `[libdefaults]
  default_realm = ${realm}
  dns_lookup_realm = false
  dns_lookup_kdc = false
  dns_canonicalize_hostname = false
  rdns = false
  clockskew = ${opts.clockskew ?? 300}
  udp_preference_limit = 1
[realms]
  ${realm} = {
    kdc = 127.0.0.1:${kdcPort}
  }
[domain_realm]
  localhost = ${realm}
  .localhost = ${realm}
`,
  );
  writeFileSync(
    kdcconf,
    `[kdcdefaults]
  kdc_ports = ${kdcPort}
  kdc_tcp_ports = ${kdcPort}
[realms]
  ${realm} = {
    database_name = ${join(dir, 'principal')}
    key_stash_file = ${join(dir, 'stash')}
    acl_file = ${join(dir, 'kadm5.acl')}
    kdc_ports = ${kdcPort}
    kdc_tcp_ports = ${kdcPort}
    max_life = 1h
    max_renewable_life = 0
    supported_enctypes = aes256-cts-hmac-sha1-96:normal aes128-cts-hmac-sha1-96:normal
  }
[logging]
  kdc = FILE:${join(dir, 'kdc.log')}
`,
  );
  writeFileSync(join(dir, 'kadm5.acl'), '');
  const env: Record<string, string> = { KRB5_CONFIG: krb5conf, KRB5_KDC_PROFILE: kdcconf, KRB5RCACHEDIR: dir };
  const penv = { ...process.env, ...env };
  run('kdb5_util', ['create', '-s', '-r', realm, '-P', randomBytes(12).toString('hex')], penv);
  const kdc: ChildProcess = spawn(findProgram('krb5kdc') ?? 'krb5kdc', ['-n', '-r', realm, '-P', join(dir, 'kdc.pid')], {
    env: penv,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  kdc.stderr?.on('data', (b: Buffer) => void (stderr += b.toString()));
  try {
    await waitTcp(kdcPort, 10_000);
  } catch (err) {
    kdc.kill('SIGKILL');
    throw new Error(`${(err as Error).message}: ${stderr}`);
  }
  const kadmin = (query: string) => run('kadmin.local', ['-r', realm, '-q', query], penv);
  let n = 0;
  return {
    realm,
    dir,
    kdcPort,
    env,
    kadmin,
    addUser(name, password) {
      // -pw on the command line is fine for a throwaway realm's test password.
      kadmin(`addprinc -pw ${password} ${name}`);
    },
    keytab(file, ...principals) {
      const path = join(dir, file);
      for (const p of principals) {
        kadmin(`addprinc -randkey ${p}`);
        kadmin(`ktadd -k ${path} ${p}`);
      }
      return path;
    },
    kinit(name, password, o = {}) {
      const cc = `FILE:${join(dir, o.ccache ?? `cc-${name}-${++n}`)}`;
      run('kinit', [...(o.lifetime ? ['-l', o.lifetime] : []), name], { ...penv, KRB5CCNAME: cc }, `${password}\n`);
      return cc;
    },
    kdcLog() {
      try {
        return spawnSync('cat', [join(dir, 'kdc.log')], { encoding: 'utf8' }).stdout ?? '';
      } catch {
        return '';
      }
    },
    async stop() {
      if (kdc.exitCode === null) {
        kdc.kill('SIGTERM');
        await new Promise((r) => {
          const timer = setTimeout(() => {
            kdc.kill('SIGKILL');
            r(undefined);
          }, 3000);
          kdc.once('exit', () => {
            clearTimeout(timer);
            r(undefined);
          });
        });
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * Headless Chromium that may answer Negotiate for `allow` (--auth-server-allowlist) with
 * the ccache `ccache` of this realm. Chromium loads GSSAPI (libgssapi_krb5.so.2) only
 * once a profile has seen a Negotiate challenge, remembered in Local State
 * `net.received_http_auth_negotiate_headers`: the profile is pre-seeded with it.
 */
export async function launchNegotiateChromium(
  realm: Realm,
  ccache: string,
  allow = 'localhost',
): Promise<{ context: import('playwright-core').BrowserContext; close(): Promise<void> }> {
  const { chromium } = await import('playwright-core');
  const { CHROMIUM_PATH, CHROMIUM_BASE_ARGS, CHROMIUM_MEDIA_ARGS } = await import('./browser.js');
  const profile = mkdtempSync(join(tmpdir(), 'gh-krb5-chromium-'));
  writeFileSync(join(profile, 'Local State'), JSON.stringify({ net: { received_http_auth_negotiate_headers: true } }));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM_PATH,
    headless: true,
    timeout: 60_000,
    args: [
      ...CHROMIUM_BASE_ARGS,
      ...CHROMIUM_MEDIA_ARGS,
      `--auth-server-allowlist=${allow}`,
      // The SPN is HTTP@<the URL's host> as written (no CNAME canonicalisation, no port).
      '--disable-auth-negotiate-cname-lookup',
    ],
    env: { ...process.env, ...realm.env, KRB5CCNAME: ccache } as Record<string, string>,
  });
  return {
    context,
    async close() {
      await context.close().catch(() => {});
      rmSync(profile, { recursive: true, force: true });
    },
  };
}
