// RFC 9110 §11.2 auth-params: one parser, two syntaxes (the grammar as written for
// Gatehouse-Cert; Digest's lenient values, src/core/digest.ts, unchanged).
import t from 'tap';
import { parseAuthParams, RFC9110_SYNTAX } from '../../../src/core/auth-params.js';
import { parseAuthHeader } from '../../../src/core/digest.js';

t.test('the grammar as written', async (t) => {
  t.same(
    [...parseAuthParams(', A=b ,, c = "d\\"e",')!],
    [
      ['a', 'b'],
      ['c', 'd"e'],
    ],
    'empty elements, BWS, quoted-pair, names lowercased',
  );
  t.equal(parseAuthParams('a=b c=d'), null, 'a comma between parameters');
  t.equal(parseAuthParams('a=b, A=c'), null, 'a parameter twice');
  t.equal(parseAuthParams('a="x\u0001"', RFC9110_SYNTAX), null, 'a control character in qdtext');
  t.equal(parseAuthParams('a="x\\\u0001"'), null, 'a control character in a quoted-pair');
  t.equal(parseAuthParams('a="x\\'), null, 'a backslash at the end');
  t.equal(parseAuthParams('a=b/c'), null, 'an unquoted value is a token');
});

t.test('Digest keeps its lenient values', async (t) => {
  t.equal(parseAuthHeader('Digest a="x\u0001"')!.params.get('a'), 'x\u0001', 'any character in a quoted value');
  t.equal(parseAuthHeader('Digest nonce=ab/c=')!.params.get('nonce'), 'ab/c=', '/ and = unquoted');
  t.equal(parseAuthHeader('Digest a="x\\'), null, 'a backslash at the end');
  t.equal(parseAuthHeader('Digest a=b, a=c'), null, 'a parameter twice');
});
