import t from 'tap';
import { defaultConfig, parseConfig, parseListen } from '../../../src/config/config.js';
import { ConfigError } from '../../../src/util/errors.js';

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
  t.throws(() => parseConfig('turn:\n  relay_address: 0.0.0.0\n', 'f.yaml'), /turn\.relay_address must be the address peers reach/);
  t.throws(() => parseConfig('turn:\n  relay_address: "::"\n', 'f.yaml'), /turn\.relay_address/);
});

t.test('tls listener without cert is refused', async (t) => {
  t.throws(() => parseConfig('turn:\n  listen: [tls://0.0.0.0:5349]\n', 'f.yaml'), /turn\.tls\.cert/);
});

t.test('secrets do not appear in error messages', async (t) => {
  try {
    parseConfig('turn:\n  rest_secret: [topsecretvalue]\n', 'f.yaml');
    t.fail('should throw');
  } catch (e) {
    t.notMatch((e as Error).message, /topsecretvalue/);
  }
});
