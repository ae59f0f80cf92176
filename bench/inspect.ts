/**
 * Offline inspection speed (issues 3, 13): `gatehouse inspect` (as it runs by default,
 * and with `--hash records`) against `tshark -o tls.keylog_file:...` decrypting the same
 * capture. One real DTLS 1.2 session between OpenSSL's s_client and s_server is captured,
 * then replicated as many flows (client port rewritten) to make a capture large enough to
 * time. Prints the median of 5 runs each, MB/s and the ratios.
 *
 *   npx tsx bench/inspect.ts [--quick] [--cli dist/cli/main.js]
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, statSync, writeFileSync, rmSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runOpensslDtls } from '../scripts/fixtures/openssl-dtls.js';

export interface InspectBenchResult {
  /** Markdown, for bench/run.ts. */
  table?: string;
  captureMB: number;
  flows: number;
  records: number;
  /** How gatehouse ran: compiled (dist/) or the sources through tsx. */
  runner: 'dist' | 'tsx';
  gatehouseSec: number;
  /** With `--hash records` (SHA-256 of every application-data record). */
  gatehouseHashSec: number;
  /** With `--threads auto` (one worker thread per core). */
  gatehouseThreadsSec: number;
  threads: number;
  tsharkSec: number | null;
  ratio: number | null;
  ratioHash: number | null;
}

/** Classic pcap records, as raw buffers (header + frame), plus the global header. */
function splitPcap(buf: Buffer): { global: Buffer; records: { hdr: Buffer; frame: Buffer }[]; linktype: number } {
  const global = buf.subarray(0, 24);
  const linktype = buf.readUInt32LE(20);
  const records: { hdr: Buffer; frame: Buffer }[] = [];
  for (let off = 24; off + 16 <= buf.length;) {
    const len = buf.readUInt32LE(off + 8);
    records.push({ hdr: buf.subarray(off, off + 16), frame: buf.subarray(off + 16, off + 16 + len) });
    off += 16 + len;
  }
  return { global, records, linktype };
}

/** Offset of the UDP header in a frame of the capture's link type (loopback: Ethernet on Linux). */
function udpOffset(linktype: number, frame: Buffer): number {
  const l2 = linktype === 1 ? 14 : linktype === 113 ? 16 : linktype === 276 ? 20 : 0;
  const ihl = (frame[l2]! & 0x0f) * 4;
  return l2 + ihl;
}

/** The bench's capture: one OpenSSL DTLS 1.2 session replicated as `flows` flows, with its key log. */
export interface InspectBenchCapture {
  pcap: string;
  keylog: string;
  serverPort: number;
  flows: number;
  captureMB: number;
}

/** Captures one real session and writes the replicated capture into `dir` (big.pcap). */
export async function buildInspectCapture(dir: string, opts: { quick?: boolean } = {}): Promise<InspectBenchCapture> {
  const payload = (i: number) => Buffer.from(`record ${i} `.padEnd(1000, 'x') + '\n');
  const run = await runOpensslDtls({
    cipher: 'ECDHE-ECDSA-AES128-GCM-SHA256',
    c2s: Array.from({ length: opts.quick ? 50 : 300 }, (_, i) => payload(i)),
    s2c: Array.from({ length: opts.quick ? 20 : 100 }, (_, i) => payload(i)),
    dir,
  });
  const { global, records, linktype } = splitPcap(readFileSync(run.pcap));
  const copies = opts.quick ? 20 : 150;
  // The fixture leaves clientPort 0 (ephemeral): the client's port is the one of the first
  // datagram that is not the server's.
  let clientPort = run.clientPort;
  for (let i = 0; clientPort === 0 && i < records.length; i++) {
    const u = udpOffset(linktype, records[i]!.frame);
    const src = records[i]!.frame.readUInt16BE(u);
    clientPort = src !== run.serverPort ? src : records[i]!.frame.readUInt16BE(u + 2);
  }
  const parts: Buffer[] = [global];
  for (let c = 0; c < copies; c++) {
    for (const r of records) {
      const frame = Buffer.from(r.frame);
      const u = udpOffset(linktype, frame);
      // Give each copy its own client port so it is a flow of its own (UDP checksum 0: RFC 768, IPv4).
      const newPort = 20000 + c;
      if (frame.readUInt16BE(u) === clientPort) frame.writeUInt16BE(newPort, u);
      if (frame.readUInt16BE(u + 2) === clientPort) frame.writeUInt16BE(newPort, u + 2);
      frame.writeUInt16BE(0, u + 6);
      parts.push(r.hdr, frame);
    }
  }
  const big = join(dir, 'big.pcap');
  writeFileSync(big, Buffer.concat(parts));
  return { pcap: big, keylog: run.keylog, serverPort: run.serverPort, flows: copies, captureMB: statSync(big).size / 1e6 };
}

/** Median wall time of `runs` runs of fn (seconds). */
function medianSec(runs: number, fn: () => void): number {
  const t: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = process.hrtime.bigint();
    fn();
    t.push(Number(process.hrtime.bigint() - t0) / 1e9);
  }
  t.sort((a, b) => a - b);
  return t[Math.floor(t.length / 2)]!;
}

export async function runInspectBench(opts: { quick?: boolean; runs?: number; cli?: string } = {}): Promise<InspectBenchResult> {
  const dir = mkdtempSync(join(tmpdir(), 'gh-inspect-bench-'));
  try {
    const cap = await buildInspectCapture(dir, opts);
    const big = cap.pcap;
    const runs = opts.runs ?? 5;
    const root = join(fileURLToPath(import.meta.url), '..', '..');
    // bin/gatehouse.js runs dist/ when `npm run build` made it, else the sources through tsx;
    // opts.cli: a compiled dist/cli/main.js elsewhere (a build of this checkout).
    const cli = opts.cli ?? join(root, 'bin', 'gatehouse.js');
    const runner = opts.cli ? 'dist' : existsSync(join(root, 'dist', 'cli', 'main.js')) ? 'dist' : 'tsx';
    const args = (extra: string[]) => [cli, 'inspect', big, '--keys', cap.keylog, '--no-progress', ...extra];
    const inspect = (extra: string[]) => {
      const gh = spawnSync(process.execPath, args(extra), { maxBuffer: 1 << 30 });
      if (gh.status !== 0) throw new Error(`gatehouse inspect exited ${gh.status}: ${gh.stderr.toString().slice(0, 500)}`);
      return gh.stdout.toString();
    };
    // The timed runs write where tshark's do (stdio 'ignore': /dev/null), not into a pipe
    // this process drains while the clock runs; the output was checked by the runs above.
    const timed = (extra: string[]) => () => {
      const gh = spawnSync(process.execPath, args(extra), { stdio: 'ignore' });
      if (gh.status !== 0) throw new Error(`gatehouse inspect ${extra.join(' ')} exited ${gh.status}`);
    };
    const out = inspect([]);
    const appdata = (out.match(/"event_type":"appdata"/g) ?? []).length;
    const hashed = (inspect(['--hash', 'records']).match(/"appdata":\{"size":\d+,"sha256":"/g) ?? []).length;
    if (hashed !== appdata) throw new Error(`--hash records: ${hashed} hashed appdata events of ${appdata}`);
    if (inspect(['--threads', 'auto']) !== out) throw new Error('--threads auto printed other lines than one thread');
    const gatehouseSec = medianSec(runs, timed([]));
    const gatehouseHashSec = medianSec(runs, timed(['--hash', 'records']));
    const gatehouseThreadsSec = medianSec(runs, timed(['--threads', 'auto']));

    let tsharkSec: number | null = null;
    try {
      tsharkSec = medianSec(runs, () =>
        execFileSync(
          'tshark',
          [
            '-n',
            '-r',
            big,
            '-o',
            `tls.keylog_file:${cap.keylog}`,
            '-d',
            `udp.port==${cap.serverPort},dtls`,
            '-Y',
            'dtls.app_data',
            '-T',
            'fields',
            '-e',
            'data.data',
          ],
          { stdio: ['ignore', 'ignore', 'ignore'], maxBuffer: 1 << 30 },
        ),
      );
    } catch {
      tsharkSec = null;
    }
    const r: InspectBenchResult = {
      captureMB: cap.captureMB,
      flows: cap.flows,
      records: appdata,
      runner,
      gatehouseSec,
      gatehouseHashSec,
      gatehouseThreadsSec,
      threads: availableParallelism(),
      tsharkSec,
      ratio: tsharkSec ? tsharkSec / gatehouseSec : null,
      ratioHash: tsharkSec ? tsharkSec / gatehouseHashSec : null,
    };
    r.table = formatInspectBench(r);
    return r;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export function formatInspectBench(r: InspectBenchResult): string {
  const row = (name: string, sec: number, records: number | '') =>
    `| ${name} | ${r.captureMB.toFixed(1)} MB | ${r.flows} | ${records} | ${sec.toFixed(2)} | ${(r.captureMB / sec).toFixed(1)} |`;
  return [
    '| offline inspection (median wall time) | capture | flows | app-data records | seconds | MB/s |',
    '|---|---:|---:|---:|---:|---:|',
    row(`gatehouse inspect (${r.runner})`, r.gatehouseSec, r.records),
    row(`gatehouse inspect --hash records (${r.runner})`, r.gatehouseHashSec, r.records),
    row(`gatehouse inspect --threads auto (${r.runner}, ${r.threads} threads)`, r.gatehouseThreadsSec, r.records),
    r.tsharkSec ? row('tshark 4.0 -o tls.keylog_file', r.tsharkSec, '') : '| tshark | not available | | | | |',
    r.ratio && r.ratioHash
      ? `\ngatehouse inspect is ${r.ratio.toFixed(1)}× faster than tshark on this capture (${r.ratioHash.toFixed(1)}× with every record hashed, ${(r.tsharkSec! / r.gatehouseThreadsSec).toFixed(1)}× with ${r.threads} threads).`
      : '',
  ].join('\n');
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const i = process.argv.indexOf('--cli');
  runInspectBench({ quick: process.argv.includes('--quick'), ...(i > 0 ? { cli: process.argv[i + 1] } : {}) }).then((r) =>
    process.stdout.write(formatInspectBench(r) + '\n'),
  );
}
