// A cluster user (`gatehouse user add`) is kept as its TURN long-term keys, never its password
// (README "Cluster"), so RFC 7616 Digest (which needs H(user:realm:password)) cannot log it
// in: the client gets the usual 401 (no hint that the name exists), the operator one log line
// per name; a configuration user with the same password still logs in.
import t from 'tap';
import { startCore } from '../../../src/core/index.js';
import { defaultConfig } from '../../../src/config/config.js';
import { digestHa1, digestResponse, parseAuthHeader, quote } from '../../../src/core/digest.js';
import { createLogger } from '../../../src/util/log.js';
import { systemClock } from '../../../src/util/clock.js';
import { Supervisor } from '../../../src/util/supervise.js';
import { encodeEntry, parseEntry } from '../../../src/cluster/users.js';
import type { UserRecord } from '../../../src/store/users.js';

async function digestLogin(url: string, user: string, password: string): Promise<number> {
  const first = await fetch(`${url}/v1/login`, { method: 'POST' });
  await first.arrayBuffer();
  const ch = (first.headers.get('www-authenticate') ?? '').split(/,\s*(?=Digest |Negotiate|Bearer)/).find((c) => c.startsWith('Digest '))!;
  const c = parseAuthHeader(ch)!.params;
  const realm = c.get('realm')!;
  const nonce = c.get('nonce')!;
  const cnonce = 'cn' + Math.random().toString(36).slice(2);
  const uri = '/v1/login';
  const response = digestResponse({
    ha1: digestHa1(user, realm, password),
    nonce,
    nc: '00000001',
    cnonce,
    qop: 'auth',
    method: 'POST',
    uri,
  });
  const r = await fetch(`${url}${uri}`, {
    method: 'POST',
    headers: {
      authorization: `Digest username=${quote(user)}, realm=${quote(realm)}, uri=${quote(uri)}, algorithm=SHA-256, qop=auth, nc=00000001, cnonce=${quote(cnonce)}, nonce=${quote(nonce)}, opaque=${quote(c.get('opaque')!)}, response="${response}"`,
    },
  });
  await r.arrayBuffer();
  return r.status;
}

t.test('Digest login: a keys-only user is refused with a log line', async (t) => {
  const cfg = defaultConfig();
  cfg.core.listen = 'http://127.0.0.1:0';
  const p = parseEntry('dave', encodeEntry({ name: 'dave', password: 'dave-pw', groups: [], realm: cfg.realm }), cfg.realm);
  if (!p.ok) throw new Error('entry');
  const users: UserRecord[] = [p.user, { name: 'alice', password: 'dave-pw', groups: [] }];
  const logged: string[] = [];
  const running = await startCore(cfg, {
    users: { lookup: (n) => users.find((u) => u.name === n) },
    events: { emit: () => {}, close: () => {} },
    logger: createLogger({ level: 'warn' }, { write: (s: string) => void logged.push(s) }),
    clock: systemClock,
    supervisor: new Supervisor(createLogger({ level: 'silent' })),
    restSecret: 'x'.repeat(43),
  });
  t.teardown(() => running.stop());
  t.equal(await digestLogin(running.url, 'alice', 'dave-pw'), 200, 'a configuration user logs in');
  t.equal(await digestLogin(running.url, 'dave', 'dave-pw'), 401, 'the cluster user with the right password: 401');
  t.equal(await digestLogin(running.url, 'dave', 'dave-pw'), 401, 'again');
  const lines = logged.filter((l) => l.includes('Digest login is not possible'));
  t.equal(lines.length, 1, 'one log line for the name');
  t.match(lines[0], /"user":"dave"/);
  t.notOk(logged.join('').includes('dave-pw'), 'no password in the log');
});
