// RFC 4515 §3 filter values and RFC 4514 DN values (src/util/ldap-escape.ts).
import t from 'tap';
import { checkDn, escapeDnValue, escapeFilterValue, firstRdnValue, isDnUnder, parseDn } from '../../../src/util/ldap-escape.js';

t.test('RFC 4515 §3: NUL ( ) * \\ are hex-escaped; controls too; UTF-8 passes', async (t) => {
  t.equal(escapeFilterValue('alice'), 'alice');
  // The examples of RFC 4515 §4.
  t.equal(escapeFilterValue('Parens R Us (for all your parenthetical needs)'), 'Parens R Us \\28for all your parenthetical needs\\29');
  t.equal(escapeFilterValue('*'), '\\2a');
  t.equal(escapeFilterValue('C:\\MyFile'), 'C:\\5cMyFile');
  t.equal(escapeFilterValue('\u0000'), '\\00');
  t.equal(escapeFilterValue('a\nb\u007f'), 'a\\0ab\\7f');
  t.equal(escapeFilterValue('Lučić'), 'Lučić');
  // An injection attempt stays one value.
  const evil = '*)(uid=*))(|(uid=*';
  const f = `(uid=${escapeFilterValue(evil)})`;
  t.equal(f, '(uid=\\2a\\29\\28uid=\\2a\\29\\29\\28|\\28uid=\\2a)');
  t.notMatch(f.slice(1, -1), /(?<!\\)[()*]/, 'no unescaped ( ) * inside the value');
});

t.test('RFC 4514 §2.4 escaping and §3 parsing round-trip', async (t) => {
  t.equal(escapeDnValue('Sales, EMEA'), 'Sales\\, EMEA');
  t.equal(escapeDnValue(' #lead'), '\\ #lead');
  t.equal(escapeDnValue('#x'), '\\#x');
  t.equal(escapeDnValue('trail '), 'trail\\ ');
  t.equal(escapeDnValue('a+b;c<d>e"f\\g'), 'a\\+b\\;c\\<d\\>e\\"f\\\\g');
  t.equal(escapeDnValue('nul\u0000'), 'nul\\00');
  for (const v of ['Sales, EMEA', ' lead ', '#1', 'a+b', 'x\\y', 'Lučić', 'q"uote', 'semi;colon']) {
    t.equal(firstRdnValue(`cn=${escapeDnValue(v)},ou=groups,dc=example,dc=org`, 'cn'), v, JSON.stringify(v));
  }
});

t.test('RFC 4514 §3 examples and malformed DNs', async (t) => {
  t.same(parseDn('UID=jsmith,DC=example,DC=net'), [
    [{ type: 'UID', value: 'jsmith' }],
    [{ type: 'DC', value: 'example' }],
    [{ type: 'DC', value: 'net' }],
  ]);
  t.same(parseDn('OU=Sales+CN=J.  Smith,DC=example,DC=net')![0], [
    { type: 'OU', value: 'Sales' },
    { type: 'CN', value: 'J.  Smith' },
  ]);
  t.equal(firstRdnValue('CN=James \\"Jim\\" Smith\\, III,DC=example,DC=net', 'cn'), 'James "Jim" Smith, III');
  t.equal(firstRdnValue('CN=Before\\0dAfter,DC=example,DC=net', 'CN'), 'Before\rAfter');
  t.equal(firstRdnValue('CN=Lu\\C4\\8Di\\C4\\87', 'cn'), 'Lučić');
  t.same(parseDn('1.3.6.1.4.1.1466.0=#04024869'), [[{ type: '1.3.6.1.4.1.1466.0', value: null }]]);
  t.equal(firstRdnValue('ou=x,cn=y', 'cn'), null, 'only the first RDN counts');
  t.same(parseDn(''), []);
  for (const bad of ['cn', 'cn=a;b', 'cn=a\\', 'cn=a\\zz', '=x', '1x=y', 'cn=#abc', 'cn=\\ff']) t.equal(parseDn(bad), null, bad);
  t.equal(checkDn('dc=example,dc=org'), null);
  t.match(checkDn('example.org')!, /not a DN/);
  t.match(checkDn('')!, /empty/);
});

t.test('isDnUnder: RDN by RDN from the right, case-insensitive, never on doubt', async (t) => {
  t.ok(isDnUnder('cn=trading,ou=groups,dc=example,dc=org', 'ou=groups,dc=example,dc=org'));
  t.ok(isDnUnder('CN=Trading,OU=Groups,DC=Example,DC=org', 'ou=groups,dc=example,dc=org'), 'case-insensitive');
  t.ok(isDnUnder('ou=groups,dc=example,dc=org', 'ou=groups,dc=example,dc=org'), 'the base itself');
  t.notOk(isDnUnder('cn=trading,ou=people,dc=example,dc=org', 'ou=groups,dc=example,dc=org'), 'another subtree');
  t.notOk(isDnUnder('cn=trading,ou=groups,dc=evil,dc=org', 'ou=groups,dc=example,dc=org'));
  t.notOk(isDnUnder('cn=x\\,ou=groups,dc=example,dc=org', 'ou=groups,dc=example,dc=org'), 'an escaped comma is not a separator');
  t.notOk(isDnUnder('dc=org', 'dc=example,dc=org'), 'shorter than the base');
  t.notOk(isDnUnder('cn=a,ou=#0403616263,dc=org', 'ou=abc,dc=org'), 'a #hex value: false');
  t.notOk(isDnUnder('not a dn', 'dc=org'));
});
