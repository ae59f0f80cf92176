// core.directory and core.ldap (src/config/ldap.ts): defaults, every key's
// errors name it, cross-key rules, secrets never echoed; Basic credentials (RFC 7617).
import t from 'tap';
import { defaultConfig, parseConfig } from '../../../src/config/config.js';
import { ConfigError } from '../../../src/util/errors.js';
import { checkUserFilter, parseLdapUrl } from '../../../src/config/ldap.js';
import { basicChallenge, parseBasic } from '../../../src/core/basic-login.js';

function err(text: string): ConfigError {
  try {
    parseConfig(text, 'f.yaml');
  } catch (e) {
    if (e instanceof ConfigError) return e;
    throw e;
  }
  throw new Error('no error');
}

t.test('defaults', async (t) => {
  t.same(defaultConfig().core.ldap, {
    bind_dn: null,
    bind_password: null,
    bind_password_file: null,
    starttls: false,
    insecure: false,
    tls: { ca: null },
    user_base: null,
    user_attribute: 'uid',
    user_object_class: 'person',
    user_filter: null,
    group_base: null,
    group_object_class: 'groupOfNames',
    group_member_attribute: 'member',
    group_name_attribute: 'cn',
    member_of_attribute: 'memberOf',
    org_attribute: null,
    cache_ttl: 300,
    stale_grace: 300,
    cache_size: 10000,
    timeout_ms: 5000,
  });
});

t.test('an Active Directory configuration parses', async (t) => {
  const c = parseConfig(
    `core:
  directory: ldaps://dc1.corp.example:636/DC=corp,DC=example
  org: corp.example
  ldap:
    bind_dn: CN=gatehouse,OU=Service Accounts,DC=corp,DC=example
    bind_password_file: /etc/gatehouse/ldap-password
    tls: { ca: /etc/gatehouse/corp-ca.pem }
    user_filter: (&(objectClass=user)(sAMAccountName={user}))
    user_attribute: sAMAccountName
    group_object_class: null
    member_of_attribute: memberOf
    cache_ttl: 120
`,
    'f.yaml',
  ).core;
  t.equal(c.ldap.user_attribute, 'sAMAccountName');
  t.equal(c.ldap.group_object_class, null);
  t.equal(c.ldap.cache_ttl, 120);
  t.same(parseLdapUrl(c.directory!), { scheme: 'ldaps', host: 'dc1.corp.example', port: 636, base: 'DC=corp,DC=example' });
});

t.test('each key: an error that names it', async (t) => {
  const cases: [string, RegExp][] = [
    ['bind_dn: not-a-dn', /core\.ldap\.bind_dn: "not-a-dn" is not a DN/],
    ['bind_password: ""', /core\.ldap\.bind_password: the password is empty/],
    ['bind_password_file: [a]', /core\.ldap\.bind_password_file: expected a file path/],
    ['starttls: yes-please', /core\.ldap\.starttls: expected true or false/],
    ['tls: { ca: [x] }', /core\.ldap\.tls\.ca: expected a PEM file path/],
    ['tls: { cert: x }', /core\.ldap\.tls\.cert: unknown key/],
    ['user_base: "dc=a;b"', /core\.ldap\.user_base: .* is not a DN/],
    ['user_attribute: "u id"', /core\.ldap\.user_attribute: "u id" is not an attribute name/],
    ['user_object_class: "*"', /core\.ldap\.user_object_class: "\*" is not an attribute name/],
    ['user_filter: "(uid=x)"', /core\.ldap\.user_filter: the filter needs \{user\}/],
    ['user_filter: "uid={user}"', /core\.ldap\.user_filter: a filter is parenthesised/],
    ['user_filter: "(uid={user}))(x)"', /core\.ldap\.user_filter: the filter has/],
    ['group_base: x', /core\.ldap\.group_base: "x" is not a DN/],
    ['group_object_class: "a b"', /core\.ldap\.group_object_class:/],
    ['group_member_attribute: "m("', /core\.ldap\.group_member_attribute:/],
    ['group_name_attribute: ""', /core\.ldap\.group_name_attribute:/],
    ['member_of_attribute: "x)"', /core\.ldap\.member_of_attribute:/],
    ['org_attribute: "o="', /core\.ldap\.org_attribute:/],
    ['cache_ttl: 0', /core\.ldap\.cache_ttl: expected seconds from 1 to 86400/],
    ['stale_grace: -1', /core\.ldap\.stale_grace: expected seconds from 0 to 86400/],
    ['cache_size: 0', /core\.ldap\.cache_size: expected a whole number from 1 to 1000000/],
    ['timeout_ms: 10', /core\.ldap\.timeout_ms: expected milliseconds from 100 to 120000/],
    ['colour: red', /core\.ldap\.colour: unknown key/],
  ];
  for (const [yaml, re] of cases) t.match(err(`core:\n  ldap:\n    ${yaml}\n`).message, re, yaml);
});

t.test('cross-key rules and core.directory', async (t) => {
  t.match(err('core:\n  ldap:\n    bind_dn: cn=x,dc=y\n').message, /core\.ldap\.bind_dn needs core\.ldap\.bind_password/);
  t.match(
    err('core:\n  ldap:\n    bind_password: s3cret-value\n').message,
    /core\.ldap\.bind_password: a bind password needs core\.ldap\.bind_dn/,
  );
  const both = err('core:\n  ldap:\n    bind_dn: cn=x,dc=y\n    bind_password: s3cret-value\n    bind_password_file: f\n');
  t.match(both.message, /core\.ldap\.bind_password_file: set core\.ldap\.bind_password or core\.ldap\.bind_password_file, not both/);
  for (const e of [both, err('core:\n  ldap:\n    bind_password: s3cret-value\n')])
    t.notMatch(e.message, /s3cret/, 'the password is not echoed');
  t.match(err('core:\n  directory: ldap://h:389/\n').message, /core\.directory: the URL names no base DN/);
  t.match(err('core:\n  directory: ldap://h:389/dc=x?cn?sub\n').message, /core\.directory: expected ldap:\/\/host:port\/base-dn/);
  t.match(err('core:\n  directory: ldap://h:70000/dc=x\n').message, /core\.directory: port 70000 is out of range/);
  t.match(err('core:\n  directory: ldap://h/not-a-dn\n').message, /core\.directory: base DN: "not-a-dn" is not a DN/);
  // Passwords never cross the network in the clear unless the admin says so.
  t.match(
    err('core:\n  directory: ldap://ldap.example:389/dc=x\n').message,
    /core\.directory: ldap\.example is not a loopback address: use ldaps:\/\/ or core\.ldap\.starttls/,
  );
  t.doesNotThrow(() => parseConfig('core:\n  directory: ldap://ldap.example:389/dc=x\n  ldap: { starttls: true }\n', 'f.yaml'));
  t.doesNotThrow(() => parseConfig('core:\n  directory: ldaps://ldap.example/dc=x\n', 'f.yaml'));
  t.doesNotThrow(() => parseConfig('core:\n  directory: ldap://127.0.0.1:3890/dc=x\n', 'f.yaml'), 'loopback');
  t.doesNotThrow(() => parseConfig('core:\n  directory: ldap://ldap.example/dc=x\n  ldap: { insecure: true }\n', 'f.yaml'), 'opted in');
  t.match(
    err('core:\n  directory: ldaps://h/dc=x\n  ldap: { starttls: true }\n').message,
    /core\.ldap\.starttls: ldaps:\/\/ is TLS already/,
  );
  t.same(
    parseLdapUrl('ldap://[::1]/ou=a%5C%2Cb,dc=c'),
    { scheme: 'ldap', host: '::1', port: 389, base: 'ou=a\\,b,dc=c' },
    'percent-decoded (RFC 4516 §2), default port',
  );
  t.equal(checkUserFilter('(&(objectClass=user)(sAMAccountName={user})(!(cn=a\\29b)))'), null);
});

t.test('RFC 7617 Basic credentials', async (t) => {
  const b = (s: string) => 'Basic ' + Buffer.from(s, 'utf8').toString('base64');
  t.same(parseBasic(b('Aladdin:open sesame')), { user: 'Aladdin', password: 'open sesame' }, 'RFC 7617 §2 example');
  t.same(parseBasic('basic  ' + Buffer.from('a:b').toString('base64')), { user: 'a', password: 'b' }, 'scheme case-insensitive, 1*SP');
  t.same(parseBasic(b('alice:pa:ss')), { user: 'alice', password: 'pa:ss' }, 'the first colon splits (user-id has none)');
  t.same(parseBasic(b('test:123£')), { user: 'test', password: '123£' }, 'RFC 7617 §2.1 UTF-8 example');
  t.same(parseBasic(b('Lu\u0063\u030Cic:x')), { user: 'Lučic', password: 'x' }, 'NFC');
  t.same(parseBasic(b('alice:')), { user: 'alice', password: '' }, 'an empty password parses (the directory refuses it, RFC 4513 §5.1.2)');
  for (const bad of [
    undefined,
    'Basic',
    'Bearer abc',
    b('nocolon'),
    b(':nouser'),
    b('ali\nce:x'),
    b('alice:x\u0000'),
    'Basic ' + Buffer.from([0x61, 0x3a, 0xff]).toString('base64'), // not UTF-8
    'Basic YWxpY2U6eA', // unpadded
    'Basic YWxp*2U6eA==',
    'Basic YWxpY2U6eA== extra',
    'Basic ' + 'A'.repeat(5000),
  ])
    t.equal(parseBasic(bad), null, String(bad).slice(0, 40));
  t.equal(basicChallenge('gate"house'), 'Basic realm="gate\\"house", charset="UTF-8"');
});

t.test("the web client's Basic (src/core/web/lib.js) is what the core parses", async (t) => {
  const path = '../../../src/core/web/lib.js';
  const lib = (await import(path)) as { basicAuthorization(u: string, p: string): string };
  t.equal(lib.basicAuthorization('test', '123£'), 'Basic dGVzdDoxMjPCow==', 'RFC 7617 §2.1 example');
  for (const [u, p] of [
    ['Aladdin', 'open sesame'],
    ['Lučić', 'pa:ss wörd'],
  ])
    t.same(parseBasic(lib.basicAuthorization(u!, p!)), { user: u, password: p });
  t.throws(() => lib.basicAuthorization('a:b', 'x'), /cannot contain ":"/);
});
