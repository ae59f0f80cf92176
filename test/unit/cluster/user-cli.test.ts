// `gatehouse user add|list` (src/cli/user.ts) against a real redis-server: add stores the
// RFC 8489 §9.2.2 keys for the configuration's realm and never the password (neither in
// Redis nor echoed); list marks entries the gateways refuse (another realm, the old
// {password} form) without printing any secret.
import t from 'tap';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { runUser } from '../../../src/cli/user.js';
import { longTermKey } from '../../../src/wire/stun.js';
import { peerSkip } from '../../e2e/helpers/require-peer.js';
import { startTestRedis } from '../../e2e/helpers/redis.js';

const skip = peerSkip(t, 'redis-server');

function sink() {
  let text = '';
  const w = new Writable({
    write(c, _e, cb) {
      text += String(c);
      cb();
    },
  });
  return { w, text: () => text };
}

t.test('user add / list', { skip }, async (t) => {
  const redis = await startTestRedis();
  t.teardown(() => redis.close());
  const dir = mkdtempSync(join(tmpdir(), 'gh-user-cli-'));
  const config = join(dir, 'gatehouse.yaml');
  writeFileSync(config, `realm: corp.example\ndata_dir: ${dir}\nstore:\n  redis: ${redis.url}\n  key_prefix: "cli:"\n`);
  const run = async (argv: string[], stdin = '') => {
    const out = sink();
    const err = sink();
    const rc = await runUser(argv, { stdout: out.w, stderr: err.w, stdin: Readable.from([Buffer.from(stdin)]) });
    return { rc, out: out.text(), err: err.text() };
  };
  const add = await run(['add', 'dave', '--groups', 'staff', '--password-stdin', '--config', config], 'S3cret-dave-pw\n');
  t.equal(add.rc, 0, add.err);
  t.match(add.out, /user dave added \(realm "corp\.example"\)/);
  t.notOk(add.out.includes('S3cret-dave-pw'), 'the password is not echoed');
  const admin = redis.client();
  const all = await admin.hgetall('cli:users');
  t.notOk(JSON.stringify(all).includes('S3cret-dave-pw'), 'Redis holds no password');
  t.same(JSON.parse(all.dave!), {
    realm: 'corp.example',
    key_md5: longTermKey('dave', 'corp.example', 'S3cret-dave-pw', 'md5').toString('hex'),
    key_sha256: longTermKey('dave', 'corp.example', 'S3cret-dave-pw', 'sha256').toString('hex'),
    groups: ['staff'],
  });
  const gen = await run(['add', 'erin', '--config', config]);
  t.equal(gen.rc, 0, gen.err);
  const pw = /password \(shown once\): (\S+)/.exec(gen.out)?.[1] ?? '';
  t.ok(pw.length >= 20, 'a generated password is printed once');
  t.notOk(JSON.stringify(await admin.hgetall('cli:users')).includes(pw), 'and not stored');
  await admin.hset('cli:users', 'old', JSON.stringify({ password: 'old-clear-pw', groups: ['x'] }));
  await admin.hset(
    'cli:users',
    'far',
    JSON.stringify({ realm: 'other.example', key_md5: '0'.repeat(32), key_sha256: '0'.repeat(64), groups: [] }),
  );
  const list = await run(['list', '--config', config]);
  t.equal(list.rc, 0, list.err);
  t.match(list.out, /^dave\tstaff$/m);
  t.match(list.out, /^erin\t$/m);
  t.match(list.out, /^far\t\trefused by gateways of realm "corp\.example": another realm$/m);
  t.match(list.out, /^old\t\trefused by gateways of realm "corp\.example": old form with the password: add it again$/m);
  t.notOk(list.out.includes('old-clear-pw') || list.out.includes(pw), 'no password listed');
  const again = await run(['add', 'old', '--password-stdin', '--config', config], 'new-pw');
  t.equal(again.rc, 0);
  t.notOk((await admin.hget('cli:users', 'old'))!.includes('old-clear-pw'), 'adding it again replaces the clear password');
});
