// The admin token: configured, or kept in DATA_DIR/admin-token; bad files stop the start.
import t, { type Test } from 'tap';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { defaultConfig } from '../../../src/config/config.js';
import { generateAdminToken, loadOrCreateAdminToken } from '../../../src/admin/token.js';

function cfgIn(dir: string, token: string | null = null) {
  const c = defaultConfig();
  c.data_dir = dir;
  c.admin.token = token;
  return c;
}

function tmp(t: Test): string {
  const dir = mkdtempSync(join(tmpdir(), 'gatehouse-token-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

t.test('generated tokens: 256 bits, base64url, kept 0600 and read back', async (t) => {
  t.match(generateAdminToken(), /^[A-Za-z0-9_-]{43}$/);
  t.not(generateAdminToken(), generateAdminToken());
  const dir = tmp(t);
  const first = loadOrCreateAdminToken(cfgIn(dir));
  t.equal(first.created, true);
  t.equal(first.file, join(dir, 'admin-token'));
  t.match(first.token, /^[A-Za-z0-9_-]{43}$/);
  t.equal(Buffer.from(first.token, 'base64url').length, 32);
  t.equal(statSync(first.file!).mode & 0o777, 0o600);
  t.equal(readFileSync(first.file!, 'utf8'), first.token + '\n');
  const again = loadOrCreateAdminToken(cfgIn(dir));
  t.same(again, { token: first.token, file: first.file, created: false });
});

t.test('a configured token wins and is used as given', async (t) => {
  const dir = tmp(t);
  const token = 'c'.repeat(40);
  t.same(loadOrCreateAdminToken(cfgIn(dir, token)), { token, created: false });
  t.throws(() => loadOrCreateAdminToken(cfgIn(dir, 'short')), /admin\.token: the admin token is shorter than 32/);
  t.throws(() => loadOrCreateAdminToken(cfgIn(dir, '')), /admin\.token: the admin token is empty/);
});

t.test('an empty, blank or short token file is an error naming the file', async (t) => {
  const dir = tmp(t);
  const file = join(dir, 'admin-token');
  for (const [what, content, re] of [
    ['empty', '', /the admin token is empty/],
    ['a newline', '\n', /the admin token is empty/],
    ['whitespace', '   \t \n', /the admin token is empty/],
    ['short', 'abc123secretish\n', /shorter than 32 characters/],
    ['inner space', `${'a'.repeat(20)} ${'b'.repeat(20)}\n`, /spaces or control characters/],
  ] as const) {
    writeFileSync(file, content);
    let err: Error | undefined;
    try {
      loadOrCreateAdminToken(cfgIn(dir));
    } catch (e) {
      err = e as Error;
    }
    t.ok(err, `${what}: refused`);
    t.ok(err!.message.startsWith(`${file}: `), `${what}: names the file`);
    t.match(err!.message, re);
    if (content.trim()) t.notMatch(err!.message, content.trim(), 'never the token');
  }
  // A token made by the older generator (24 random bytes: 32 characters) still works.
  const old = Buffer.alloc(24, 7).toString('base64url');
  writeFileSync(file, old + '\r\n');
  t.equal(loadOrCreateAdminToken(cfgIn(dir)).token, old);
});
