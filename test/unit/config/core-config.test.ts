// The `core:` keys of contract.md (src/config/config.ts): defaults, types, unknown keys
// named, and core.md §1: plain HTTP only on loopback, https:// with core.tls.
import t from 'tap';
import { defaultConfig, parseConfig } from '../../../src/config/config.js';
import { ConfigError } from '../../../src/util/errors.js';

function err(text: string): ConfigError {
  try {
    parseConfig(text, 'f.yaml');
  } catch (e) {
    if (e instanceof ConfigError) return e;
    throw e;
  }
  throw new Error('no error');
}

t.test('defaults (contract.md)', async (t) => {
  t.same(defaultConfig().core, {
    listen: 'http://127.0.0.1:8088',
    tls: { cert: null, key: null },
    pool: [],
    pool_secret: null,
    directory: null,
    ldap: defaultConfig().core.ldap, // its defaults: test/unit/core/ldap-config.test.ts
    max_connections_per_user: 3,
    org: null,
    trust: { roots: [], crls: [] },
    peers: [],
    signing: { cert: null, key: null },
    kerberos: { keytab: null, service: null, realm: [], max_concurrent: 32 },
    token_ttl: 3600,
    turn_ttl: 600,
  });
});

t.test('values, peers, and located errors', async (t) => {
  const c = parseConfig(
    `core:
  listen: https://0.0.0.0:8443
  tls: { cert: c.pem, key: k.pem }
  pool: [https://fe1.example:8089]
  directory: ldaps://ldap.example:636/dc=example,dc=org
  max_connections_per_user: 5
  org: example.org
  peers: [{ org: other.org, cert: other.pem, allow: { users: [alice], groups: [g] } }]
  kerberos: { keytab: /etc/http.keytab }
  token_ttl: 600
`,
    'f.yaml',
  ).core;
  t.equal(c.listen, 'https://0.0.0.0:8443');
  t.same(c.peers, [{ org: 'other.org', cert: 'other.pem', allow: { users: ['alice'], groups: ['g'] } }]);
  t.equal(c.max_connections_per_user, 5);
  t.match(err('core:\n  lisen: http://127.0.0.1:1\n').message, /f\.yaml:2:3: core\.lisen: unknown key/);
  t.match(err('core:\n  max_connections_per_user: 0\n').message, /core\.max_connections_per_user/);
  t.match(err('core:\n  listen: http://0.0.0.0:8088\n').message, /core\.listen: 0\.0\.0\.0 is not a loopback address.*core\.tls/);
  t.match(err('core:\n  listen: https://127.0.0.1:8443\n').message, /core\.listen: an https:\/\/ core listener needs core\.tls/);
  t.match(err('core:\n  tls: { cert: c.pem }\n').message, /core\.tls\.cert and core\.tls\.key must be set together/);
  t.match(err('core:\n  peers: [{ cert: x.pem }]\n').message, /core\.peers\[0\]: a peer needs an org/);
  const e = err('core:\n  pool_secret: short-secret-value\n');
  t.match(e.message, /pool secrets are at least 32 characters/);
  t.notMatch(e.message, /short-secret-value/, 'the value is not echoed');
  t.equal(parseConfig('core:\n  listen: http://[::1]:8088\n', 'f.yaml').core.listen, 'http://[::1]:8088', 'IPv6 loopback is loopback');
});
