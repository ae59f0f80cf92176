// Negotiate (RFC 4559) pieces without a KDC: the Authorization header (§4.2), the
// principal → user mapping (realms, instances, escapes), GSSAPI error classes, the SPNEGO
// negState of the final token (RFC 4178 §4.2.2), keytab names (MIT keytab format 0x0502),
// and the mechanism and module over a stand-in GSSAPI binding (a mock: the real one is
// proved in test/e2e/core-kerberos.test.ts against MIT krb5).
import t from 'tap';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  parseNegotiate,
  classifyGssError,
  negotiateResponseHeader,
  spnegoNegState,
  MAX_TOKEN_CHARS,
} from '../../../src/core/negotiate-wire.js';
import { principalUser } from '../../../src/core/negotiate-principal.js';
import { keytabPrincipals, serviceRealms } from '../../../src/core/negotiate-keytab.js';
import { negotiateMechanism, negotiateModule, type GssAcceptor, type GssBinding } from '../../../src/core/negotiate.js';
import { parseConfig } from '../../../src/config/config.js';
import { createLogger } from '../../../src/util/log.js';
import { StaticUserDirectory } from '../../../src/store/users.js';
import { CoreError } from '../../../src/core/errors.js';
import type { CoreContext, Directory } from '../../../src/core/director.js';
import type { RequestContext } from '../../../src/core/http.js';
import { ConfigError } from '../../../src/util/errors.js';

const gss = (bytes: number[] | Buffer) => Buffer.from(bytes as number[]).toString('base64');
const INIT = gss([0x60, 0x06, 0x06, 0x06, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x02]); // [APPLICATION 0] SPNEGO OID

t.test('Authorization: Negotiate <token> (RFC 4559 §4.2)', async (t) => {
  t.same(parseNegotiate(`Negotiate ${INIT}`), { ok: true, token: INIT });
  t.same(parseNegotiate(`negotiate ${INIT}`), { ok: true, token: INIT }, 'the scheme is case-insensitive (RFC 9110 §11.1)');
  t.same(parseNegotiate(`NEGOTIATE ${INIT}  `), { ok: true, token: INIT });
  t.match(parseNegotiate(undefined), { ok: false, problem: /no Authorization/ });
  t.match(parseNegotiate('Negotiate'), { ok: false, problem: /no token/ });
  t.match(parseNegotiate('Negotiate '), { ok: false, problem: /no token/ });
  t.match(parseNegotiate(`Digest ${INIT}`), { ok: false, problem: /not the Negotiate scheme/ });
  t.match(parseNegotiate(`Negotiatex ${INIT}`), { ok: false, problem: /not the Negotiate scheme/ });
  t.match(parseNegotiate(`Negotiate ${INIT} extra`), { ok: false, problem: /not the Negotiate scheme/ }, 'one token68 only');
  t.match(parseNegotiate('Negotiate YWJj*A=='), { ok: false, problem: /not base64/ });
  t.match(parseNegotiate('Negotiate YWJ'), { ok: false, problem: /not base64/ }, 'unpadded');
  t.match(parseNegotiate('Negotiate YW=j'), { ok: false, problem: /not base64/ });
  t.match(parseNegotiate(`Negotiate ${gss(Buffer.from('hello kerberos!'))}`), { ok: false, problem: /not a GSSAPI initial context token/ });
  t.match(
    parseNegotiate(`Negotiate ${gss([0xa1, 0x03, 0x30, 0x01, 0x00, 0x00])}`),
    { ok: false, problem: /initial context token/ },
    'a negTokenResp is not a first leg',
  );
  const ntlm = gss(Buffer.concat([Buffer.from('NTLMSSP\0', 'latin1'), Buffer.from([1, 0, 0, 0, 0, 0, 0, 0])]));
  t.match(parseNegotiate(`Negotiate ${ntlm}`), { ok: false, problem: /NTLM is not accepted/ });
  t.match(parseNegotiate(`Negotiate ${'A'.repeat(MAX_TOKEN_CHARS + 4)}`), { ok: false, problem: /too long/ });
  t.equal(negotiateResponseHeader('b2s='), 'Negotiate b2s=', 'the final leg (RFC 4559 §4.2)');
  t.equal(negotiateResponseHeader(''), 'Negotiate');
  t.equal(negotiateResponseHeader(null), 'Negotiate');
});

t.test('principal → user: the configured realms only, users only', async (t) => {
  const R = ['EXAMPLE.COM', 'CORP.EXAMPLE.COM'];
  t.same(principalUser('alice@EXAMPLE.COM', R), { ok: true, user: 'alice', realm: 'EXAMPLE.COM' });
  t.same(principalUser('bob@CORP.EXAMPLE.COM', R), { ok: true, user: 'bob', realm: 'CORP.EXAMPLE.COM' });
  t.match(
    principalUser('alice@example.com', R),
    { ok: false, problem: /realm "example.com" are not accepted/ },
    'realms are case-sensitive (RFC 4120 §6.1)',
  );
  t.match(principalUser('alice@EVIL.COM', R), { ok: false, problem: /not accepted/ });
  t.match(principalUser('alice@EXAMPLE.COM.EVIL.COM', R), { ok: false, problem: /not accepted/ });
  t.match(principalUser('alice', R), { ok: false, problem: /no realm/ });
  t.match(principalUser('@EXAMPLE.COM', R), { ok: false, problem: /no realm/ });
  t.match(principalUser('alice@', R), { ok: false, problem: /no realm/ });
  t.match(principalUser('', R), { ok: false });
  t.match(principalUser('alice/admin@EXAMPLE.COM', R), { ok: false, problem: /instance/ }, 'alice/admin is not alice');
  t.match(principalUser('HTTP/gw.example.com@EXAMPLE.COM', R), { ok: false, problem: /instance/ }, 'a service is not a user');
  t.match(principalUser('alice\\@EVIL.COM@EXAMPLE.COM', R), { ok: false, problem: /escaped/ }, 'an escaped @ (RFC 1964 §2.1.1)');
  t.match(principalUser('alice@EVIL.COM@EXAMPLE.COM', R), { ok: false, problem: /enterprise/ });
  t.match(principalUser('al\u0001ice@EXAMPLE.COM', R), { ok: false });
  t.match(principalUser(`${'a'.repeat(300)}@EXAMPLE.COM`, R), { ok: false });
  t.match(principalUser('alice@EXAMPLE.COM', []), { ok: false }, 'no realm configured: nobody');
});

t.test('GSSAPI failures: replay is `replayed`, the rest 401 with a reason', async (t) => {
  const pre = 'Unspecified GSS failure.  Minor code may provide more information: ';
  t.same(classifyGssError(`${pre}Request is a replay`).code, 'replayed');
  t.match(classifyGssError(`${pre}Ticket expired`), { code: 'unauthenticated', reason: /expired/ });
  t.match(classifyGssError(`${pre}Clock skew too great`), { code: 'unauthenticated', reason: /clock skew/ });
  t.match(
    classifyGssError(`${pre}Request ticket server host/localhost@R found in keytab but does not match server principal HTTP/localhost@`),
    { reason: /not for this service/ },
  );
  t.match(classifyGssError(`${pre}Request ticket server HTTP/localhost@R kvno 2 not found in keytab; ticket is likely out of date`), {
    reason: /key has changed/,
  });
  t.match(classifyGssError('Invalid token was supplied: Unknown error'), { code: 'unauthenticated', reason: /not accepted/ });
});

t.test('SPNEGO negState of the final token (RFC 4178 §4.2.2)', async (t) => {
  // negTokenResp { negState accept-completed, supportedMech krb5, responseToken ... }
  t.equal(spnegoNegState(gss([0xa1, 0x07, 0x30, 0x05, 0xa0, 0x03, 0x0a, 0x01, 0x00])), 0);
  t.equal(spnegoNegState(gss([0xa1, 0x07, 0x30, 0x05, 0xa0, 0x03, 0x0a, 0x01, 0x01])), 1, 'accept-incomplete');
  t.equal(spnegoNegState(gss([0xa1, 0x07, 0x30, 0x05, 0xa0, 0x03, 0x0a, 0x01, 0x03])), 3, 'request-mic');
  const long = [0xa1, 0x81, 0x07, 0x30, 0x81, 0x04, 0xa0, 0x03, 0x0a, 0x01, 0x00];
  t.equal(spnegoNegState(gss(long)), 0, 'long-form lengths (X.690 §8.1.3.5)');
  t.equal(spnegoNegState(gss([0x60, 0x03, 0x06, 0x01, 0x00])), null, 'a bare Kerberos token');
  t.equal(spnegoNegState(gss([0xa1, 0x04, 0x30, 0x02, 0xa1, 0x00])), null, 'no negState');
  t.equal(spnegoNegState(gss([0xa1])), null, 'truncated');
});

/** A keytab of MIT's format 0x0502 with these principals (keys are zeros), and a hole. */
function keytab(...principals: { components: string[]; realm: string }[]): Buffer {
  const parts: Buffer[] = [Buffer.from([0x05, 0x02])];
  const data = (s: string) => {
    const b = Buffer.from(s);
    const l = Buffer.alloc(2);
    l.writeUInt16BE(b.length);
    return Buffer.concat([l, b]);
  };
  const hole = Buffer.alloc(4);
  hole.writeInt32BE(-6);
  parts.push(hole, Buffer.alloc(6));
  for (const p of principals) {
    const n = Buffer.alloc(2);
    n.writeUInt16BE(p.components.length);
    const tail = Buffer.alloc(4 + 4 + 1 + 2 + 2 + 32 + 4);
    tail.writeUInt32BE(1, 0); // KRB5_NT_PRINCIPAL
    tail.writeUInt32BE(1_700_000_000, 4);
    tail[8] = 3; // vno8
    tail.writeUInt16BE(18, 9); // aes256-cts-hmac-sha1-96
    tail.writeUInt16BE(32, 11);
    tail.writeUInt32BE(3, 45); // vno
    const entry = Buffer.concat([n, data(p.realm), ...p.components.map(data), tail]);
    const size = Buffer.alloc(4);
    size.writeInt32BE(entry.length);
    parts.push(size, entry);
  }
  return Buffer.concat(parts);
}

t.test('keytab names (MIT keytab file format 0x0502)', async (t) => {
  const kt = keytab(
    { components: ['HTTP', 'gw.example.com'], realm: 'EXAMPLE.COM' },
    { components: ['HTTP', 'GW.example.com'], realm: 'CORP.EXAMPLE.COM' },
    { components: ['host', 'gw.example.com'], realm: 'EXAMPLE.COM' },
  );
  const ps = keytabPrincipals(kt);
  t.same(
    ps.map((p) => `${p.components.join('/')}@${p.realm}`),
    ['HTTP/gw.example.com@EXAMPLE.COM', 'HTTP/GW.example.com@CORP.EXAMPLE.COM', 'host/gw.example.com@EXAMPLE.COM'],
  );
  t.same(serviceRealms(ps, 'HTTP@gw.example.com'), ['EXAMPLE.COM', 'CORP.EXAMPLE.COM'], 'host names compare case-insensitively');
  t.same(serviceRealms(ps, 'HTTP@other.example.com'), []);
  t.same(serviceRealms(ps, 'http@gw.example.com'), [], 'the service name is case-sensitive');
  t.throws(() => keytabPrincipals(Buffer.from([0x05, 0x01, 0, 0, 0, 0])), /0x0501 is not supported/);
  t.throws(() => keytabPrincipals(Buffer.from('not a keytab')), /not a keytab/);
  t.throws(() => keytabPrincipals(kt.subarray(0, kt.length - 10)), /truncated/);
  t.same(keytabPrincipals(Buffer.from([0x05, 0x02])), [], 'empty');
});

// ---- The mechanism and the module over a stand-in binding ---------------------------

interface FakeOutcome {
  username?: string;
  response?: string;
  complete?: boolean;
  error?: string;
  delayMs?: number;
}
function fakeBinding(
  outcome: () => FakeOutcome,
  seen: { services: string[]; tokens: string[] } = { services: [], tokens: [] },
): GssBinding {
  return {
    async initializeServer(service) {
      seen.services.push(service);
      const state = { username: '', response: '', contextComplete: false };
      const acc: GssAcceptor = {
        get username() {
          return state.username;
        },
        get response() {
          return state.response;
        },
        get contextComplete() {
          return state.contextComplete;
        },
        async step(tok) {
          seen.tokens.push(tok);
          const o = outcome();
          if (o.delayMs) await new Promise((r) => setTimeout(r, o.delayMs));
          if (o.error) throw new Error(o.error);
          state.username = o.username ?? '';
          state.response = o.response ?? '';
          state.contextComplete = o.complete ?? true;
          return state.response;
        },
      };
      return acc;
    },
  };
}

function coreWith(opts: { keytab?: string | null; directory?: Directory | null } = {}): CoreContext {
  const cfg = parseConfig(
    opts.keytab ? `core:\n  kerberos: { keytab: ${JSON.stringify(opts.keytab)}, service: HTTP@gw.example.com }\n` : '',
    'f.yaml',
  );
  return {
    cfg,
    log: createLogger({ level: 'silent' }),
    users: new StaticUserDirectory([{ name: 'alice', password: 'pw-alice-1234', groups: ['trading'] }]),
    directory: opts.directory ?? null,
  } as unknown as CoreContext;
}
const ctxOf = (authorization?: string) =>
  ({ req: { headers: authorization ? { authorization } : {} }, source: '192.0.2.1' }) as unknown as RequestContext;
const MUTUAL = gss([0xa1, 0x07, 0x30, 0x05, 0xa0, 0x03, 0x0a, 0x01, 0x00]);

const started = (p: void | Promise<void>): Promise<Error | null> =>
  Promise.resolve(p).then(
    () => null,
    (e: Error) => e,
  );

async function refusal(p: Promise<unknown>): Promise<CoreError> {
  try {
    await p;
  } catch (e) {
    if (e instanceof CoreError) return e;
    throw e;
  }
  throw new Error('not refused');
}

t.test('the mechanism: users from the store or the directory, one leg, bounded', async (t) => {
  let out: FakeOutcome = { username: 'alice@EXAMPLE.COM', response: MUTUAL };
  const seen = { services: [] as string[], tokens: [] as string[] };
  const core = coreWith();
  const m = negotiateMechanism(core, {
    binding: fakeBinding(() => out, seen),
    service: 'HTTP@gw.example.com',
    realms: ['EXAMPLE.COM'],
    maxConcurrent: 2,
  });
  t.equal(m.scheme, 'Negotiate');
  t.equal(m.challenge(ctxOf()), 'Negotiate', 'a bare challenge (RFC 4559 §4.1)');
  t.equal(m.claimedUser!(ctxOf(`Negotiate ${INIT}`)), null);
  const ok = await m.verify(ctxOf(`Negotiate ${INIT}`));
  t.same(ok, { user: 'alice', groups: ['trading'], headers: { 'www-authenticate': `Negotiate ${MUTUAL}` } });
  t.same(seen, { services: ['HTTP@gw.example.com'], tokens: [INIT] }, 'one acceptor per request, for the configured service');

  out = { username: 'mallory@EXAMPLE.COM' };
  let e = await refusal(m.verify(ctxOf(`Negotiate ${INIT}`)));
  t.equal(e.code, 'unauthenticated');
  t.match(e.message, /mallory is not a user here/);
  t.equal((e as unknown as { user: string }).user, 'mallory', 'the auth event names the principal');

  out = { username: 'alice@OTHER.REALM' };
  e = await refusal(m.verify(ctxOf(`Negotiate ${INIT}`)));
  t.match(e.message, /not accepted/);

  out = { error: 'Unspecified GSS failure.  Minor code may provide more information: Request is a replay' };
  t.equal((await refusal(m.verify(ctxOf(`Negotiate ${INIT}`)))).code, 'replayed');
  out = { error: 'Unspecified GSS failure.  Minor code may provide more information: Ticket expired' };
  t.match((await refusal(m.verify(ctxOf(`Negotiate ${INIT}`)))).message, /expired/);

  out = { username: 'alice@EXAMPLE.COM', complete: false };
  t.match((await refusal(m.verify(ctxOf(`Negotiate ${INIT}`)))).message, /one leg/, 'continue-needed is refused');
  out = { username: 'alice@EXAMPLE.COM', response: gss([0xa1, 0x07, 0x30, 0x05, 0xa0, 0x03, 0x0a, 0x01, 0x03]) };
  t.match((await refusal(m.verify(ctxOf(`Negotiate ${INIT}`)))).message, /one leg/, 'SPNEGO request-mic is refused');
  out = { username: '' };
  t.match((await refusal(m.verify(ctxOf(`Negotiate ${INIT}`)))).message, /one leg/);

  t.match((await refusal(m.verify(ctxOf('Negotiate')))).message, /no token/);
  t.equal(seen.tokens.length, 8, 'a malformed header never reaches GSSAPI');

  out = { username: 'alice@EXAMPLE.COM', delayMs: 50 };
  const a = m.verify(ctxOf(`Negotiate ${INIT}`));
  const b = m.verify(ctxOf(`Negotiate ${INIT}`));
  const c = await refusal(m.verify(ctxOf(`Negotiate ${INIT}`)));
  t.equal(c.code, 'rate_limited', 'core.kerberos.max_concurrent contexts at once');
  t.equal(c.headers['retry-after'], '1');
  await Promise.all([a, b]);
  t.ok(await m.verify(ctxOf(`Negotiate ${INIT}`)), 'the bound frees when they finish');

  out = { error: 'boom' };
  await refusal(m.verify(ctxOf(`Negotiate ${INIT}`)));
  out = { username: 'alice@EXAMPLE.COM' };
  t.ok(await m.verify(ctxOf(`Negotiate ${INIT}`)), 'and after a failure');
});

t.test('the mechanism: core.directory gives the user, groups and org; its outage is 503', async (t) => {
  let down = false;
  const directory: Directory = {
    async user(name) {
      if (down) throw new CoreError('unavailable', 'the directory cannot be reached');
      return name === 'carol' ? { name: 'carol', groups: ['desk'], org: 'example.org' } : null;
    },
    async authenticate() {
      return null;
    },
  };
  const core = coreWith({ directory });
  let who = 'carol@EXAMPLE.COM';
  const m = negotiateMechanism(core, {
    binding: fakeBinding(() => ({ username: who })),
    service: 'HTTP@gw.example.com',
    realms: ['EXAMPLE.COM'],
    maxConcurrent: 4,
  });
  t.same(await m.verify(ctxOf(`Negotiate ${INIT}`)), {
    user: 'carol',
    groups: ['desk'],
    org: 'example.org',
    headers: { 'www-authenticate': 'Negotiate' },
  });
  who = 'alice@EXAMPLE.COM';
  t.match(
    (await refusal(m.verify(ctxOf(`Negotiate ${INIT}`)))).message,
    /alice is not a user here/,
    "the gateway's store is not asked when there is a directory",
  );
  down = true;
  who = 'carol@EXAMPLE.COM';
  t.equal((await refusal(m.verify(ctxOf(`Negotiate ${INIT}`)))).code, 'unavailable', 'never an admit when the directory is down');
});

t.test('the module: off without a keytab; with one, it refuses to start unless Negotiate can work', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gh-negotiate-'));
  const kt = join(dir, 'http.keytab');
  writeFileSync(kt, keytab({ components: ['HTTP', 'gw.example.com'], realm: 'EXAMPLE.COM' }));
  const good = async () => ({ binding: fakeBinding(() => ({})) });
  let loaded = 0;
  await started(negotiateModule({ load: async () => (loaded++, good()) })(coreWith()));
  t.equal(loaded, 0, 'no keytab: the package is not even loaded');

  const missing = await started(
    negotiateModule({ load: async () => ({ binding: null, problem: "Cannot find package 'kerberos'" }) })(coreWith({ keytab: kt })),
  );
  t.match(String(missing), /core\.kerberos\.keytab is set, but Negotiate is unavailable.*Cannot find package 'kerberos'.*libkrb5-dev/);
  const unreadable = await started(negotiateModule({ load: good })(coreWith({ keytab: join(dir, 'nope.keytab') })));
  t.match(String(unreadable), /core\.kerberos\.keytab: .*nope\.keytab cannot be read/);
  const other = join(dir, 'other.keytab');
  writeFileSync(other, keytab({ components: ['HTTP', 'other.example.com'], realm: 'EXAMPLE.COM' }));
  const noKey = await started(negotiateModule({ load: good })(coreWith({ keytab: other })));
  t.match(String(noKey), /holds no key for HTTP\/gw\.example\.com@REALM.*it holds HTTP\/other\.example\.com@EXAMPLE\.COM/);
  const unusable = await started(
    negotiateModule({
      load: async () => ({
        binding: {
          async initializeServer() {
            throw new Error('No key table entry found for HTTP/gw.example.com@EXAMPLE.COM');
          },
        },
      }),
    })(coreWith({ keytab: kt })),
  );
  t.match(String(unusable), /cannot accept for HTTP@gw\.example\.com/);
  const before = process.env.KRB5_KTNAME;
  t.teardown(() => {
    if (before === undefined) delete process.env.KRB5_KTNAME;
    else process.env.KRB5_KTNAME = before;
  });
  t.equal(await started(negotiateModule({ load: good })(coreWith({ keytab: kt }))), null, 'starts with a usable key');
  t.equal(process.env.KRB5_KTNAME, `FILE:${kt}`, 'GSSAPI is pointed at the keytab');
});

t.test('config: core.kerberos keys are checked and named', async (t) => {
  const err = (text: string) => {
    try {
      parseConfig(text, 'f.yaml');
    } catch (e) {
      if (e instanceof ConfigError) return e.message;
      throw e;
    }
    return 'no error';
  };
  const k = parseConfig('core:\n  kerberos: { keytab: /etc/http.keytab, service: HTTP@gw.example.com, realm: EXAMPLE.COM }\n', 'f.yaml')
    .core.kerberos;
  t.same(
    k,
    { keytab: '/etc/http.keytab', service: 'HTTP@gw.example.com', realm: ['EXAMPLE.COM'], max_concurrent: 32 },
    'one realm or a list',
  );
  t.same(parseConfig('core:\n  kerberos: { realm: [A.COM, B.COM] }\n', 'f.yaml').core.kerberos.realm, ['A.COM', 'B.COM']);
  t.match(
    err('core:\n  kerberos: { service: HTTP/gw.example.com }\n'),
    /core\.kerberos\.service: expected a host-based service name like HTTP@/,
  );
  t.match(err('core:\n  kerberos: { realm: "EXAMPLE COM" }\n'), /core\.kerberos\.realm: "EXAMPLE COM" is not a realm name/);
  t.match(err('core:\n  kerberos: { max_concurrent: 0 }\n'), /core\.kerberos\.max_concurrent/);
  t.match(err('core:\n  kerberos: { keytabs: x }\n'), /core\.kerberos\.keytabs: unknown key/);
});
