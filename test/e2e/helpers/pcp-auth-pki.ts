// Test PKI for the RFC 7652 / EAP-TLS tests: a CA, a server certificate (the gateway or
// hostapd) and client certificates (the endpoint), made with openssl in a temp dir.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface Pki {
  dir: string;
  ca: string;
  caPath: string;
  serverCert: string;
  serverKey: string;
  serverCertPath: string;
  serverKeyPath: string;
  clientCert: string;
  clientKey: string;
  /** A client certificate from another CA (must be refused). */
  rogueCert: string;
  rogueKey: string;
  cleanup(): void;
}

function ossl(dir: string, ...args: string[]): void {
  execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
}

function issue(dir: string, name: string, subj: string, caName: string, ext: string): void {
  ossl(
    dir,
    'req',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:prime256v1',
    '-nodes',
    '-keyout',
    `${name}.key`,
    '-out',
    `${name}.csr`,
    '-subj',
    subj,
  );
  writeFileSync(join(dir, `${name}.ext`), ext);
  ossl(
    dir,
    'x509',
    '-req',
    '-in',
    `${name}.csr`,
    '-CA',
    `${caName}.pem`,
    '-CAkey',
    `${caName}.key`,
    '-CAcreateserial',
    '-days',
    '2',
    '-out',
    `${name}.pem`,
    '-extfile',
    `${name}.ext`,
  );
}

function makeCa(dir: string, name: string, cn: string): void {
  ossl(
    dir,
    'req',
    '-x509',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:prime256v1',
    '-nodes',
    '-keyout',
    `${name}.key`,
    '-out',
    `${name}.pem`,
    '-days',
    '2',
    '-subj',
    `/CN=${cn}`,
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign',
  );
}

export function makePki(): Pki {
  const dir = mkdtempSync(join(tmpdir(), 'gh-pcp-auth-'));
  makeCa(dir, 'ca', 'Gatehouse Test CA');
  makeCa(dir, 'rogue-ca', 'Rogue CA');
  issue(
    dir,
    'server',
    '/CN=gw.test',
    'ca',
    'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:gw.test\n',
  );
  issue(
    dir,
    'client',
    '/CN=alice@example.com/OU=staff',
    'ca',
    'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n',
  );
  issue(
    dir,
    'rogue',
    '/CN=mallory@example.com',
    'rogue-ca',
    'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n',
  );
  const r = (f: string) => readFileSync(join(dir, f), 'utf8');
  return {
    dir,
    ca: r('ca.pem'),
    caPath: join(dir, 'ca.pem'),
    serverCert: r('server.pem'),
    serverKey: r('server.key'),
    serverCertPath: join(dir, 'server.pem'),
    serverKeyPath: join(dir, 'server.key'),
    clientCert: r('client.pem'),
    clientKey: r('client.key'),
    rogueCert: r('rogue.pem'),
    rogueKey: r('rogue.key'),
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
}
