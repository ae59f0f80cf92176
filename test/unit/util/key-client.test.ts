/**
 * The worker's side of the key broker (src/util/key-client.ts) against answers a broker
 * must never give: not JSON, key not base64, an answer longer than the bound, a close
 * without an answer, no socket at all. Every one is an E_KEY_BROKER error, never bytes.
 * (The real broker's answers are tested in key-broker.test.ts.)
 */
import t, { type Test } from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { requestKey } from '../../../src/util/key-client.js';

/** A Unix socket server that answers every request line with `answer(line)` (null: close without a word). */
async function fakeBroker(t: Test, answer: (line: string) => string | null): Promise<{ path: string; requests: string[] }> {
  const dir = mkdtempSync(join(tmpdir(), 'gh-keyclient-'));
  const path = join(dir, 's');
  const requests: string[] = [];
  const server = createServer((s: Socket) => {
    let buf = '';
    s.on('data', (d: Buffer) => {
      buf += d.toString();
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      const line = buf.slice(0, nl);
      requests.push(line);
      const a = answer(line);
      if (a === null) s.destroy();
      else s.end(a);
    });
  });
  await new Promise<void>((r) => server.listen(path, r));
  t.teardown(async () => {
    await new Promise<void>((r) => server.close(() => r()));
    rmSync(dir, { recursive: true, force: true });
  });
  return { path, requests };
}

t.test('a well-formed answer gives the bytes; the request names only the key', async (t) => {
  const key = Buffer.from([0, 1, 2, 250, 251, 252, 253]);
  const b = await fakeBroker(t, () => JSON.stringify({ ok: true, key: key.toString('base64') }) + '\n');
  t.ok((await requestKey(b.path, 'identity')).equals(key));
  t.same(b.requests, ['{"key":"identity"}']);
});

t.test('answers a broker never gives are errors, not keys', async (t) => {
  const cases: [string, string | null, string][] = [
    ['refused', '{"ok":false,"error":"refused"}\n', 'E_KEY_REFUSED'],
    ['malformed (the broker did not accept the request)', '{"ok":false,"error":"malformed"}\n', 'E_KEY_BROKER'],
    ['not JSON', 'hello\n', 'E_KEY_BROKER'],
    ['key not base64', '{"ok":true,"key":"not base64!"}\n', 'E_KEY_BROKER'],
    ['a duplicate member', '{"ok":true,"key":"AAAA","key":"BBBB"}\n', 'E_KEY_BROKER'],
    ['no newline before close', '{"ok":true,"key":"AAAA"}', 'E_KEY_BROKER'],
    ['closed without a word', null, 'E_KEY_BROKER'],
  ];
  for (const [what, answer, code] of cases) {
    const b = await fakeBroker(t, () => answer);
    await t.rejects(requestKey(b.path, 'identity'), { code }, what);
  }
  const long = await fakeBroker(t, () => JSON.stringify({ ok: true, key: Buffer.alloc(4096).toString('base64') }) + '\n');
  await t.rejects(
    requestKey(long.path, 'identity', { maxBytes: 1024 }),
    { code: 'E_KEY_BROKER', message: /too long/ },
    'longer than the bound',
  );
  await t.rejects(requestKey(join(tmpdir(), 'gh-no-such-dir', 's'), 'identity'), { code: 'E_KEY_BROKER', message: /ENOENT/ }, 'no socket');
});
