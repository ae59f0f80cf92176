/**
 * `gatehouse inspect`'s LineWriter encodes lines straight into 64 KiB batches (issue 13):
 * what reaches stdout is every line, in order, UTF-8, one newline each, whatever the
 * lines' lengths and characters (a line longer than a batch goes out on its own).
 */
import t from 'tap';
import { PassThrough } from 'node:stream';
import { LineWriter } from '../../../src/cli/inspect.js';

t.test('every line, in order, as UTF-8, across batch boundaries', async (t) => {
  const out = new PassThrough();
  const chunks: Buffer[] = [];
  out.on('data', (d: Buffer) => chunks.push(d));
  const w = new LineWriter(out);
  const lines: string[] = [];
  for (let i = 0; i < 3000; i++) {
    // ASCII, two- and three-byte characters, a surrogate pair, and lines of every size up
    // to past a batch (3 bytes per code unit are reserved: 21 846 units no longer fit).
    const body = i % 97 === 0 ? 'x'.repeat(21_800 + i) : i % 13 === 0 ? `é€😀 ${i}`.repeat(1 + (i % 50)) : `{"n":${i}}`;
    lines.push(body);
    w.line(body);
  }
  w.line('z'.repeat(200_000));
  lines.push('z'.repeat(200_000));
  await w.end();
  const text = Buffer.concat(chunks).toString('utf8');
  t.equal(text, lines.join('\n') + '\n');
  t.ok(chunks.length > 10, `written in batches (${chunks.length})`);
});
