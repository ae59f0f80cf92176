/**
 * Micro-benchmark: DTLS 1.2 record decryption cost per suite (ns/record), with
 * src/wire/dtls-crypto.ts, plus the naive CBC alternative (new AES-CBC decipher and new
 * HMAC per record) that the shared-ECB + precomputed-HMAC-state path replaces.
 * Not a test: figures are printed, never asserted.
 *
 *   npx tsx bench/dtls-decrypt.ts [--quick]
 *   npm run bench -- --only dtls     (via bench/run.ts: runDtlsDecryptBench)
 */
import { createDecipheriv, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CIPHER_SUITES, DtlsRecordDecryptor, DtlsRecordEncryptor, recordAad } from '../src/wire/dtls-crypto.js';

export interface DtlsBenchRow {
  suite: string;
  variant: string;
  payload: number;
  nsPerRecord: number;
  mbPerSec: number;
}

const V = 0xfefd;

function time(n: number, fn: (i: number) => void): number {
  for (let i = 0; i < Math.min(1000, n); i++) fn(i); // warm-up
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) fn(i);
  return Number(process.hrtime.bigint() - t0) / n;
}

/** The straightforward CBC MtE decryption the session does not use: per-record objects. */
function naiveCbc(
  keyLen: number,
  key: Buffer,
  macAlg: string,
  macKey: Buffer,
  macLen: number,
  epoch: number,
  seq: number,
  f: Buffer,
): Buffer | null {
  const d = createDecipheriv(`aes-${keyLen * 8}-cbc`, key, f.subarray(0, 16)).setAutoPadding(false);
  const p = Buffer.concat([d.update(f.subarray(16)), d.final()]);
  const pad = p[p.length - 1]!;
  const contentLen = p.length - pad - 1 - macLen;
  if (contentLen < 0) return null;
  const aad = recordAad(Buffer.alloc(13), 23, V, epoch, seq, contentLen);
  const mac = createHmac(macAlg, macKey).update(aad).update(p.subarray(0, contentLen)).digest();
  return timingSafeEqual(mac, p.subarray(contentLen, contentLen + macLen)) ? p.subarray(0, contentLen) : null;
}

export async function runDtlsDecryptBench(opts: { quick?: boolean; count?: number } = {}): Promise<DtlsBenchRow[]> {
  const n = opts.count ?? (opts.quick ? 3000 : 30000);
  const rows: DtlsBenchRow[] = [];
  for (const payload of [100, 1200]) {
    for (const [id, s] of CIPHER_SUITES) {
      if (s.tls13) continue;
      const variants = s.kind === 'cbc' ? [false, true] : [false];
      for (const etm of variants) {
        const keys = { key: randomBytes(s.keyLen), iv: randomBytes(s.ivLen), macKey: randomBytes(s.macLen), encryptThenMac: etm };
        const enc = new DtlsRecordEncryptor(id, keys);
        const dec = new DtlsRecordDecryptor(id, keys);
        const recs = Array.from({ length: 64 }, (_, i) => enc.encrypt(23, V, 1, i, randomBytes(payload)));
        let ok = 0;
        const ns = time(n, (i) => {
          if (dec.decrypt(23, V, 1, i & 63, recs[i & 63]!)) ok++;
        });
        if (ok === 0) throw new Error(`${s.name}: nothing decrypted`);
        rows.push({
          suite: `0x${id.toString(16).padStart(4, '0')} ${s.name}`,
          variant: s.kind === 'cbc' ? (etm ? 'EtM' : 'MtE') : s.kind,
          payload,
          nsPerRecord: ns,
          mbPerSec: (payload / ns) * 1000,
        });
        if (s.kind === 'cbc' && !etm) {
          const nsNaive = time(n, (i) => {
            naiveCbc(s.keyLen, keys.key, s.macHash!, keys.macKey, s.macLen, 1, i & 63, recs[i & 63]!);
          });
          rows.push({
            suite: `0x${id.toString(16).padStart(4, '0')} ${s.name}`,
            variant: 'MtE naive (new cipher+HMAC per record)',
            payload,
            nsPerRecord: nsNaive,
            mbPerSec: (payload / nsNaive) * 1000,
          });
        }
      }
    }
  }
  return rows;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  runDtlsDecryptBench({ quick: process.argv.includes('--quick') }).then((rows) => {
    const w = Math.max(...rows.map((r) => r.suite.length));
    for (const r of rows)
      process.stdout.write(
        `${r.suite.padEnd(w)}  ${r.variant.padEnd(40)} ${String(r.payload).padStart(5)} B  ${r.nsPerRecord.toFixed(0).padStart(7)} ns/record  ${r.mbPerSec.toFixed(1).padStart(7)} MB/s\n`,
      );
  });
}
