/**
 * Dev tool: cuts a small DTLS 1.3 test-vector fixture out of a harness output dir
 * (relay leg only): the four traffic secrets of the association (throwaway keys of a test
 * call) and a handful of short protected records of each kind, in capture order.
 *   npx tsx scripts/browser/make-dtls13-fixture.ts <harness out dir> <fixture.json>
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { legDatagrams } from './capture.js';
import { isUnifiedHeader, unifiedRecordEnd } from '../../src/wire/dtls13.js';

const [dir, outPath] = process.argv.slice(2);
if (!dir || !outPath) throw new Error('usage: make-dtls13-fixture.ts <dir> <out.json>');
const run = JSON.parse(readFileSync(join(dir, 'run.json'), 'utf8'));
const keylog = readFileSync(join(dir, 'keylog.txt'), 'utf8');
const dg = legDatagrams(join(dir, 'capture.pcap'), run.turn.port).filter((d) => d.leg === 'relay');
let client = '';
let clientRandom = '';
let suite = 0;
const records: { dir: 'c2s' | 's2c'; hex: string }[] = [];
const perKind = new Map<string, number>();
for (const d of dg) {
  const p = d.payload;
  if (!p.length || p[0]! < 20 || p[0]! > 63) continue;
  let o = 0;
  while (o < p.length) {
    if (!isUnifiedHeader(p[o]!)) {
      if (o + 13 > p.length) break;
      const len = p.readUInt16BE(o + 11);
      const body = p.subarray(o + 13, o + 13 + len);
      if (p[o] === 22 && body[0] === 1 && !client) {
        client = d.from;
        clientRandom = body.subarray(14, 46).toString('hex');
      }
      if (p[o] === 22 && body[0] === 2 && !suite) suite = body.readUInt16BE(47 + body[46]!);
      o += 13 + len;
      continue;
    }
    const e = unifiedRecordEnd(p, o);
    if (e < 0) break;
    const dir = d.from === client ? 'c2s' : 's2c';
    const kind = `${dir}/${p[o]! & 3}/${e - o < 120 ? 's' : 'l'}`;
    const n = perKind.get(kind) ?? 0;
    if (e - o <= 600 && n < 4) {
      perKind.set(kind, n + 1);
      records.push({ dir, hex: p.subarray(o, e).toString('hex') });
    }
    o = e;
  }
}
const sec = (label: string) => {
  const m = new RegExp(`^${label} ${clientRandom} ([0-9a-f]+)$`, 'm').exec(keylog);
  if (!m) throw new Error(`${label} missing`);
  return m[1];
};
const fixture = {
  source: 'Firefox ESR relay-leg capture made by scripts/browser/harness.ts; throwaway keys of a test call',
  firefox: run.firefoxVersion,
  suite,
  clientRandom,
  secrets: {
    CLIENT_HANDSHAKE_TRAFFIC_SECRET: sec('CLIENT_HANDSHAKE_TRAFFIC_SECRET'),
    SERVER_HANDSHAKE_TRAFFIC_SECRET: sec('SERVER_HANDSHAKE_TRAFFIC_SECRET'),
    CLIENT_TRAFFIC_SECRET_0: sec('CLIENT_TRAFFIC_SECRET_0'),
    SERVER_TRAFFIC_SECRET_0: sec('SERVER_TRAFFIC_SECRET_0'),
  },
  records,
};
writeFileSync(outPath, JSON.stringify(fixture, null, 1) + '\n');
process.stderr.write(`${records.length} records, suite 0x${suite.toString(16)}\n`);
