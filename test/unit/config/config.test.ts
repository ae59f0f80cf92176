import t, { type Test } from 'tap';
import { defaultConfig, parseConfig, parseListen } from '../../../src/config/config.js';
import { ConfigError } from '../../../src/util/errors.js';
import { assertNoSecrets, Secrets } from '../../e2e/helpers/secrets.js';

t.test('embedded default matches contract.md', async (t) => {
  const c = defaultConfig();
  t.same(c.turn.listen, ['udp://0.0.0.0:3478', 'tcp://0.0.0.0:3478']);
  t.equal(c.realm, 'gatehouse.local');
  t.equal(c.data_dir, './data');
  t.equal(c.admin.listen, 'http://127.0.0.1:8080');
  t.same(c.turn.relay_ports, [49152, 65535]);
  t.equal(c.policy.rules, './rules');
  t.same(c.users, []);
});

t.test('a full configuration parses', async (t) => {
  const c = parseConfig(
    `realm: bank.example
data_dir: /var/lib/gatehouse
turn:
  listen: [udp://0.0.0.0:3478, "tcp://[::]:3478"]
  relay_address: 192.0.2.10
  relay_ports: [50000, 50100]
  peers: { allow: [10.0.0.0/8], deny: [198.51.100.0/24] }
  rest_secret: s3cret
users:
  - { name: alice, password: secret, groups: [trading] }
`,
    'gatehouse.yaml',
  );
  t.equal(c.realm, 'bank.example');
  t.same(c.turn.peers.allow, ['10.0.0.0/8']);
  t.same(c.users[0]!.groups, ['trading']);
  t.same(parseListen(c.turn.listen[1]!), { proto: 'tcp', host: '::', port: 3478 });
});

const broken: [string, string, RegExp][] = [
  ['unknown top-level key', 'realmm: x\n', /^f\.yaml:1:1: realmm: unknown key/],
  ['unknown nested key', 'turn:\n  lisen: []\n', /^f\.yaml:2:3: turn\.lisen: unknown key/],
  ['wrong type', 'turn:\n  relay_ports: 5\n', /^f\.yaml:2:16: turn\.relay_ports: expected a list/],
  ['bad port', 'turn:\n  listen: [udp://0.0.0.0:70000]\n', /turn\.listen\[0\]: port 70000 is out of range/],
  ['bad proto', 'turn:\n  listen: [sctp://0.0.0.0:1]\n', /turn\.listen\[0\]: expected proto:\/\/address:port/],
  ['bad CIDR', 'turn:\n  peers:\n    allow: [10.0.0.0/33]\n', /^f\.yaml:3:13: turn\.peers\.allow\[0\]: prefix length/],
  ['bad relay address', 'turn:\n  relay_address: example.com\n', /turn\.relay_address: "example\.com" is not an IP address/],
  ['user without colon rule', 'users:\n  - { name: "a:b", password: x }\n', /users\[0\]\.name: user names/],
  [
    'user name with a slash (core.md §8 guest names)',
    'users:\n  - { name: "guest/c1/ann", password: x }\n',
    /users\[0\]\.name: user names .*"\/"/,
  ],
  ['user name with a control character', 'users:\n  - { name: "a\\tb", password: x }\n', /users\[0\]\.name: user names/],
  ['duplicate key', 'realm: a\nrealm: b\n', /realm: key appears twice/],
  ['yaml syntax', 'turn: [\n', /^f\.yaml:\d+:\d+: YAML syntax/],
  ['log level', 'log_level: loud\n', /log_level: expected one of trace \| debug/],
];
for (const [name, text, re] of broken) {
  t.test(`rejects: ${name}`, async (t) => {
    let err: unknown;
    try {
      parseConfig(text, 'f.yaml');
    } catch (e) {
      err = e;
    }
    t.ok(err instanceof ConfigError, 'a ConfigError');
    t.match((err as Error).message, re);
  });
}

t.test('an unspecified relay address is refused (it is advertised to clients)', async (t) => {
  t.throws(
    () => parseConfig('turn:\n  relay_address: 0.0.0.0\n', 'f.yaml'),
    /^f\.yaml:2:18: turn\.relay_address: must be the address peers reach/,
  );
  t.throws(() => parseConfig('turn:\n  relay_address: "::"\n', 'f.yaml'), /^f\.yaml:2:18: turn\.relay_address/);
});

t.test('tls listener without cert is refused', async (t) => {
  t.throws(() => parseConfig('turn:\n  listen: [tls://0.0.0.0:5349]\n', 'f.yaml'), /^f\.yaml:2:12: turn\.listen\[0\]: .*turn\.tls\.cert/);
  t.throws(
    () => parseConfig('turn:\n  listen:\n    - udp://0.0.0.0:3478\n    - tls://0.0.0.0:5349\n  tls: { cert: a.pem }\n', 'f.yaml'),
    /^f\.yaml:4:7: turn\.listen\[1\]: /,
  );
  t.throws(() => parseConfig('turn:\n  listen: tls://0.0.0.0:5349\n', 'f.yaml'), /^f\.yaml:2:11: turn\.listen: /);
});

t.test('secrets do not appear in error messages', async (t) => {
  try {
    parseConfig('turn:\n  rest_secret: [topsecretvalue]\n', 'f.yaml');
    t.fail('should throw');
  } catch (e) {
    assertNoSecrets(
      t,
      new Secrets().add('rest_secret', 'config', 'topsecretvalue'),
      { texts: { message: (e as Error).message } },
      'secret not echoed',
    );
  }
});

/** The ConfigError parseConfig throws, or a failure. */
function configError(t: Test, text: string): ConfigError {
  try {
    parseConfig(text, 'f.yaml');
  } catch (e) {
    t.ok(e instanceof ConfigError, 'a ConfigError');
    return e as ConfigError;
  }
  t.fail('should throw');
  return new ConfigError('', 0, 0, '', '');
}

t.test('cross-key errors carry file:line:column of the offending key', async (t) => {
  let e = configError(t, 'turn:\n  max_lifetime: 900\n  default_lifetime: 1200\n');
  t.match(e.message, /^f\.yaml:3:21: turn\.default_lifetime: turn\.default_lifetime \(1200\) exceeds turn\.max_lifetime \(900\)/);
  t.same([e.line, e.column, e.key], [3, 21, 'turn.default_lifetime']);
  e = configError(t, 'turn:\n  default_lifetime: 4000\n');
  t.match(e.message, /^f\.yaml:2:21: turn\.default_lifetime: .*exceeds turn\.max_lifetime \(3600\)/, 'max_lifetime is a default');
  e = configError(t, 'realm: x\nidentity:\n  key: /etc/k.pem\n');
  t.match(e.message, /^f\.yaml:3:8: identity\.key: identity\.cert and identity\.key must be set together/);
  e = configError(t, 'identity: { cert: c.pem }\n');
  t.match(e.message, /^f\.yaml:1:19: identity\.cert: /);
});

t.test('turn.software: fewer than 128 characters, at most 763 bytes (RFC 8489 §14.14)', async (t) => {
  t.equal(parseConfig(`turn:\n  software: ${'a'.repeat(127)}\n`).turn.software.length, 127);
  t.equal(parseConfig('turn:\n  software: ""\n').turn.software, '', 'empty: no SOFTWARE attribute');
  t.match(
    configError(t, `turn:\n  software: ${'a'.repeat(128)}\n`).message,
    /^f\.yaml:2:13: turn\.software: must be fewer than 128 characters/,
  );
  // 127 characters of 4-byte UTF-8 are 508 bytes: within 763; characters are code points.
  t.equal([...parseConfig(`turn:\n  software: "${'😀'.repeat(127)}"\n`).turn.software].length, 127);
  t.match(configError(t, `turn:\n  software: "${'😀'.repeat(128)}"\n`).message, /turn\.software: must be fewer than 128/);
});

t.test('users: non-empty passwords, unique names', async (t) => {
  let e = configError(t, 'users:\n  - { name: alice, password: "" }\n');
  t.match(e.message, /^f\.yaml:2:30: users\[0\]\.password: passwords must not be empty/);
  e = configError(t, 'users:\n  - { name: alice }\n');
  t.match(e.message, /^f\.yaml:2:5: users\[0\]\.password: passwords must not be empty/);
  e = configError(t, 'users:\n  - password: x\n');
  t.match(e.message, /users\[0\]\.name: a user needs a name/);
  e = configError(
    t,
    'users:\n  - { name: alice, password: topsecret1 }\n  - { name: bob, password: b }\n  - { name: alice, password: topsecret2 }\n',
  );
  t.match(e.message, /^f\.yaml:4:13: users\[2\]\.name: user "alice" is already defined at users\[0\]/);
  t.notMatch(e.message, /topsecret/);
  // NFC and NFD spellings of one name are one user (OpaqueString, RFC 8265).
  e = configError(t, 'users:\n  - { name: "caf\\u00e9", password: x }\n  - { name: "cafe\\u0301", password: y }\n');
  t.match(e.message, /^f\.yaml:3:13: users\[1\]\.name: .*already defined/);
  t.equal(
    parseConfig('users:\n  - { name: alice, password: " " }\n  - { name: Alice, password: x }\n').users.length,
    2,
    'names are case-sensitive',
  );
});

t.test('turn.relay_ports start at 1024', async (t) => {
  t.same(parseConfig('turn:\n  relay_ports: [1024, 2048]\n').turn.relay_ports, [1024, 2048]);
  t.match(
    configError(t, 'turn:\n  relay_ports: [1023, 2048]\n').message,
    /^f\.yaml:2:17: turn\.relay_ports\[0\]: expected a port 1024-65535/,
  );
  t.match(configError(t, 'turn:\n  relay_ports: [80, 80]\n').message, /turn\.relay_ports\[0\]: expected a port 1024-65535/);
});

t.test('admin.token: at least 32 characters, never echoed', async (t) => {
  const ok = 'x'.repeat(32);
  t.equal(parseConfig(`admin:\n  token: ${ok}\n`).admin.token, ok);
  t.equal(parseConfig('admin:\n  token: null\n').admin.token, null);
  for (const bad of ['short-secret-token', '', '"   "', `"${'y'.repeat(20)} ${'y'.repeat(20)}"`]) {
    const e = configError(t, `admin:\n  token: ${bad || '""'}\n`);
    t.match(e.message, /^f\.yaml:2:10: admin\.token: admin tokens /, `refuses ${bad || 'empty'}`);
    if (bad.length > 3) t.notMatch(e.message, bad.replace(/"/g, ''), 'the token is not in the message');
  }
});

t.test('admin.listen: beyond loopback only with TLS or admin.insecure', async (t) => {
  t.equal(parseConfig('admin:\n  listen: http://127.0.0.1:9000\n').admin.insecure, false);
  t.ok(parseConfig('admin:\n  listen: "http://[::1]:9000"\n'));
  t.ok(parseConfig('admin:\n  listen: http://localhost:9000\n'));
  t.ok(parseConfig('admin:\n  listen: http://127.0.0.2:0\n'), 'all of 127/8 is loopback; port 0 picks one');
  let e = configError(t, 'admin:\n  listen: http://0.0.0.0:8080\n');
  t.match(e.message, /^f\.yaml:2:11: admin\.listen: 0\.0\.0\.0 is not a loopback address: serve https:\/\/ with admin\.tls/);
  t.match(configError(t, 'admin:\n  listen: "http://[::]:8080"\n').message, /admin\.listen: :: is not a loopback address/);
  t.match(configError(t, 'admin:\n  listen: http://10.1.2.3:8080\n').message, /admin\.listen: 10\.1\.2\.3 is not a loopback/);
  const insecure = parseConfig('admin:\n  listen: http://0.0.0.0:8080\n  insecure: true\n');
  t.equal(insecure.admin.insecure, true);
  const tls = parseConfig('admin:\n  listen: https://0.0.0.0:8443\n  tls: { cert: /etc/a.crt, key: /etc/a.key }\n');
  t.same(tls.admin.tls, { cert: '/etc/a.crt', key: '/etc/a.key' });
  t.ok(parseConfig('admin:\n  listen: https://127.0.0.1:8443\n  tls: { cert: a.crt, key: a.key }\n'));
  e = configError(t, 'admin:\n  listen: https://0.0.0.0:8443\n');
  t.match(e.message, /^f\.yaml:2:11: admin\.listen: an https:\/\/ admin listener needs admin\.tls\.cert/);
  e = configError(t, 'admin:\n  listen: http://127.0.0.1:8080\n  tls: { cert: a.crt, key: a.key }\n');
  t.match(e.message, /^f\.yaml:3:16: admin\.tls\.cert: admin\.tls is set: write admin\.listen as https/);
  e = configError(t, 'admin:\n  listen: https://127.0.0.1:8443\n  tls:\n    key: a.key\n');
  t.match(e.message, /^f\.yaml:4:10: admin\.tls\.key: admin\.tls\.cert and admin\.tls\.key must be set together/);
  t.match(configError(t, 'admin:\n  listen: ftp://127.0.0.1:21\n').message, /admin\.listen: expected http:\/\/address:port or https/);
  t.match(configError(t, 'admin:\n  insecure: yes please\n').message, /admin\.insecure: expected true or false/);
});

t.test('the embedded default still parses and keeps its values', async (t) => {
  const c = defaultConfig();
  t.same(c.admin, { listen: 'http://127.0.0.1:8080', token: null, tls: { cert: null, key: null }, insecure: false });
  t.equal(c.turn.software, 'Gatehouse');
});

/** The message fn throws ('' when it does not). */
function thrown(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    return (e as Error).message;
  }
  return '';
}

t.test('the user directory holds the same rules as the configuration', async (t) => {
  const { StaticUserDirectory, ensureBootstrapUser } = await import('../../../src/store/users.js');
  const d = new StaticUserDirectory([{ name: 'alice', password: 'pw', groups: [] }]);
  t.equal(d.lookup('alice')?.password, 'pw');
  t.throws(() => new StaticUserDirectory([{ name: 'bob', password: '', groups: [] }]), /user "bob" has an empty password/);
  const dup = thrown(
    () =>
      new StaticUserDirectory([
        { name: 'bob', password: 'one-secret', groups: [] },
        { name: 'bob', password: 'two-secret', groups: [] },
      ]),
  );
  t.match(dup, /user "bob" is defined twice/);
  t.notMatch(dup, /secret/);
  const { mkdtempSync, writeFileSync, rmSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const dir = mkdtempSync(join(tmpdir(), 'gatehouse-users-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const made = ensureBootstrapUser(dir, []);
  t.equal(made.created?.name, 'admin');
  t.same(ensureBootstrapUser(dir, []).users, [made.created]);
  writeFileSync(join(dir, 'initial-user.json'), '{"name":"admin","password":""}\n');
  t.throws(() => ensureBootstrapUser(dir, []), /initial-user\.json: not a user with a name and a non-empty password/);
  writeFileSync(join(dir, 'initial-user.json'), '{"name":"admin","password":"leaky-secret"');
  const bad = thrown(() => ensureBootstrapUser(dir, []));
  t.match(bad, /initial-user\.json: not a user/);
  t.notMatch(bad, /leaky/);
});
