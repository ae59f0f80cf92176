// Real-browser proof of the DTLS 1.3 decryptor: Firefox ESR calls itself (two
// RTCPeerConnections in one page) through coturn with iceTransportPolicy 'relay' inside a
// private network namespace; we capture loopback and the NSS key log, then decrypt every
// DTLS 1.3 protected record of the association on every leg (relay leg raw, client legs
// unwrapped from TURN Send/Data indications or ChannelData) with Dtls13Stream/Dtls13Reader,
// using only the key log; SRTP packets must authenticate with keys from the DTLS 1.3
// exporter. The same for a Firefox ↔ Chromium call (Chromium writes no key log: Firefox's
// alone covers both directions). Also runs the DTLS 1.2 variant of the harness.
//
// Needs firefox-esr, coturn (turnserver), dumpcap (tshark) — skipped when missing, a failure in CI.
// GH_FIREFOX_CAPTURE=<dir> reuses an existing harness output dir instead of running Firefox.
import t from 'tap';
import { createCipheriv, createDecipheriv, createHmac } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runFirefoxCall, type RunInfo, type PageReport } from '../../scripts/browser/harness.js';
import { legDatagrams, type LegDatagram } from '../../scripts/browser/capture.js';
import {
  Dtls13Stream,
  type Dtls13Record,
  isUnifiedHeader,
  unifiedRecordEnd,
  CT_APPLICATION_DATA,
  CT_HANDSHAKE,
  CT_ACK,
  CT_ALERT,
} from '../../src/wire/dtls13.js';
import { srtpKeysFromExporter } from '../../src/wire/tls-prf.js';
import { peerSkip } from './helpers/require-peer.js';

// Missing peers: the tests are skipped with the reason, and in CI the file fails.
const missing = peerSkip(t, 'firefox-esr', 'turnserver', 'dumpcap');

/** NSS key log: LABEL <client_random hex> <secret hex>. Test-local parser (src/inspect/keylog.ts is another owner's). */
function parseKeylog(text: string): Map<string, Map<string, Buffer>> {
  const m = new Map<string, Map<string, Buffer>>();
  for (const line of text.split('\n')) {
    const p = line.trim().split(/\s+/);
    if (p.length !== 3 || line.startsWith('#')) continue;
    const cr = p[1]!.toLowerCase();
    if (!m.has(cr)) m.set(cr, new Map());
    m.get(cr)!.set(p[0]!, Buffer.from(p[2]!, 'hex'));
  }
  return m;
}

interface Hello {
  type: 1 | 2;
  random: string;
  suite?: number;
}

/**
 * Plaintext DTLS records (RFC 6347 §4.1 / RFC 9147 §4: 13-byte DTLSPlaintext header) of a
 * datagram, returning ClientHello/ServerHello randoms (RFC 6347 §4.2.2 handshake header).
 */
function plaintextHellos(p: Buffer): Hello[] {
  const out: Hello[] = [];
  let o = 0;
  while (o + 13 <= p.length) {
    const type = p[o]!;
    if (isUnifiedHeader(type)) {
      const e = unifiedRecordEnd(p, o);
      if (e < 0) break;
      o = e;
      continue;
    }
    if (type < 20 || type > 25) break;
    const len = p.readUInt16BE(o + 11);
    const body = p.subarray(o + 13, o + 13 + len);
    if (type === 22 && body.length >= 12 + 2 + 32 && p.readUInt16BE(o + 3) === 0 && body.readUIntBE(6, 3) === 0) {
      const ht = body[0]!;
      if (ht === 1 || ht === 2) {
        const h: Hello = { type: ht, random: body.subarray(14, 46).toString('hex') };
        if (ht === 2 && body.length >= 12 + 2 + 32 + 1) {
          const sidLen = body[46]!;
          if (body.length >= 47 + sidLen + 2) h.suite = body.readUInt16BE(47 + sidLen);
        }
        out.push(h);
      }
    }
    o += 13 + len;
  }
  return out;
}

interface FlowResult {
  flow: string;
  leg: string;
  clientRandom?: string;
  suite?: number;
  counts: Record<string, number>;
  failures: number;
  sctp: { c2s: number; s2c: number };
  keyUpdates: number;
  maxEpoch: number;
  epochs: Set<number>;
  ackRecords: number;
  client?: string;
  /** RFC 5764 use_srtp profile from the decrypted EncryptedExtensions (DTLS 1.3: encrypted). */
  srtpProfile?: number;
}

function analyse(dgrams: LegDatagram[], keys: Map<string, Map<string, Buffer>>): FlowResult[] {
  const flows = new Map<string, FlowResult & { readers?: Record<string, Dtls13Stream> }>();
  for (const d of dgrams) {
    const p = d.payload;
    if (p.length === 0 || p[0]! < 20 || p[0]! > 63) continue; // RFC 7983 §7: DTLS is 20..63
    let f = flows.get(d.flow);
    if (!f) {
      f = {
        flow: d.flow,
        leg: d.leg,
        counts: {},
        failures: 0,
        sctp: { c2s: 0, s2c: 0 },
        keyUpdates: 0,
        maxEpoch: 0,
        epochs: new Set(),
        ackRecords: 0,
      };
      flows.set(d.flow, f);
    }
    for (const h of plaintextHellos(p)) {
      if (h.type === 1) {
        f.client = d.from;
        f.clientRandom = h.random;
      }
      if (h.type === 2 && h.suite) f.suite = h.suite;
    }
    if (!f.clientRandom || !f.suite || !f.client) continue;
    if (!f.readers) {
      const s = keys.get(f.clientRandom);
      if (!s) continue;
      f.readers = {
        c2s: new Dtls13Stream(f.suite, s.get('CLIENT_TRAFFIC_SECRET_0')!, 3, s.get('CLIENT_HANDSHAKE_TRAFFIC_SECRET')!),
        s2c: new Dtls13Stream(f.suite, s.get('SERVER_TRAFFIC_SECRET_0')!, 3, s.get('SERVER_HANDSHAKE_TRAFFIC_SECRET')!),
      };
    }
    const dir = d.from === f.client ? 'c2s' : 's2c';
    let o = 0;
    while (o < p.length) {
      if (!isUnifiedHeader(p[o]!)) {
        // plaintext record (epoch 0): skip by its length field
        if (o + 13 > p.length) break;
        o += 13 + p.readUInt16BE(o + 11);
        continue;
      }
      const rec: Dtls13Record | null = f.readers[dir]!.open(p, o);
      if (!rec) {
        f.failures++;
        const e = unifiedRecordEnd(p, o);
        if (e < 0) break;
        o = e;
        continue;
      }
      f.epochs.add(rec.epoch);
      f.maxEpoch = Math.max(f.maxEpoch, rec.epoch);
      const k = `${dir}/e${rec.epoch}/ct${rec.contentType}`;
      f.counts[k] = (f.counts[k] ?? 0) + 1;
      if (rec.keyUpdate) f.keyUpdates++;
      if (rec.contentType === CT_ACK) f.ackRecords++;
      if (rec.contentType === CT_HANDSHAKE && rec.epoch === 2 && rec.plaintext[0] === 8) f.srtpProfile = useSrtpProfile(rec.plaintext);
      // RFC 8261 §4 / RFC 4960 §3.1: SCTP common header, Firefox uses port 5000 both sides.
      if (
        rec.contentType === CT_APPLICATION_DATA &&
        rec.plaintext.length >= 12 &&
        rec.plaintext.readUInt16BE(0) === 5000 &&
        rec.plaintext.readUInt16BE(2) === 5000
      ) {
        f.sctp[dir]++;
      }
      o = rec.next;
    }
  }
  for (const f of flows.values()) for (const r of Object.values(f.readers ?? {})) r.wipe();
  return [...flows.values()];
}

/** RFC 8446 §4.3.1 EncryptedExtensions (after the 12-byte DTLS handshake header): use_srtp (14), RFC 5764 §4.1.1. */
function useSrtpProfile(msg: Buffer): number | undefined {
  const b = msg.subarray(12);
  if (b.length < 2) return undefined;
  const total = b.readUInt16BE(0);
  for (let o = 2; o + 4 <= Math.min(b.length, 2 + total);) {
    const type = b.readUInt16BE(o);
    const len = b.readUInt16BE(o + 2);
    if (type === 14 && len >= 4) return b.readUInt16BE(o + 6); // first (only) profile selected
    o += 4 + len;
  }
  return undefined;
}

/**
 * Test-local SRTP authentication check (the SRTP module belongs to another owner): RFC 3711
 * §4.3.3 AES-CM key derivation (kdr 0), then RFC 7714 §8.1 AES-GCM (profiles 7, 8) or
 * RFC 3711 §4.2 HMAC-SHA1 (profiles 1, 2). Counts RTP packets that authenticate with ROC 0 or 1.
 */
function srtpCheck(dgrams: LegDatagram[], client: string, exporter: Buffer, profile: number): { ok: number; bad: number } {
  const k = srtpKeysFromExporter('sha256', exporter, profile)!;
  const gcm = profile === 7 || profile === 8;
  const prf = (mk: Buffer, ms: Buffer, label: number, n: number) => {
    const iv = Buffer.alloc(16);
    ms.copy(iv, 0); // 96-bit GCM salts are zero-padded to 112 bits (RFC 7714 §11)
    iv[7] = iv[7]! ^ label;
    return createCipheriv(mk.length === 32 ? 'aes-256-ctr' : 'aes-128-ctr', mk, iv).update(Buffer.alloc(n));
  };
  const sess = (mk: Buffer, ms: Buffer) => ({ key: prf(mk, ms, 0, mk.length), auth: prf(mk, ms, 1, 20), salt: prf(mk, ms, 2, ms.length) });
  const S = { c: sess(k.clientKey, k.clientSalt), s: sess(k.serverKey, k.serverSalt) };
  const tagLen = gcm ? 16 : profile === 2 ? 4 : 10;
  let ok = 0;
  let bad = 0;
  for (const d of dgrams) {
    const p = d.payload;
    if (p.length < 12 + tagLen || p[0]! < 128 || p[0]! > 191) continue; // RFC 7983: RTP/RTCP 128..191
    const pt = p[1]! & 0x7f;
    if (pt >= 64 && pt <= 95) continue; // RFC 5761 §4: RTCP
    let h = 12 + 4 * (p[0]! & 15);
    if (p[0]! & 0x10) h += 4 + 4 * p.readUInt16BE(h + 2);
    const s = d.from === client ? S.c : S.s;
    let good = false;
    for (const roc of [0, 1]) {
      if (gcm) {
        const iv = Buffer.alloc(12); // RFC 7714 §8.1: 00 00 || SSRC || ROC || SEQ, XOR salt
        p.copy(iv, 2, 8, 12);
        iv.writeUInt32BE(roc, 6);
        p.copy(iv, 10, 2, 4);
        for (let i = 0; i < 12; i++) iv[i] = iv[i]! ^ s.salt[i]!;
        try {
          const dc = createDecipheriv(s.key.length === 32 ? 'aes-256-gcm' : 'aes-128-gcm', s.key, iv, { authTagLength: 16 });
          dc.setAAD(p.subarray(0, h));
          dc.setAuthTag(p.subarray(p.length - 16));
          dc.update(p.subarray(h, p.length - 16));
          dc.final();
          good = true;
        } catch {
          /* try next ROC */
        }
      } else {
        const r = Buffer.alloc(4);
        r.writeUInt32BE(roc);
        const tag = createHmac('sha1', s.auth)
          .update(p.subarray(0, p.length - tagLen))
          .update(r)
          .digest()
          .subarray(0, tagLen);
        good = tag.equals(p.subarray(p.length - tagLen));
      }
      if (good) break;
    }
    if (good) ok++;
    else bad++;
  }
  return { ok, bad };
}

type Test = Parameters<Parameters<typeof t.test>[0]>[0];

/** Runs the harness (or reuses GH_FIREFOX_CAPTURE) and checks the DTLS 1.3 capture. */
async function dtls13Call(t: Test, peer: 'none' | 'chromium'): Promise<void> {
  let dir = process.env.GH_FIREFOX_CAPTURE;
  let tmp: string | undefined;
  if (!dir) {
    tmp = mkdtempSync(join(tmpdir(), `gh-e2e-ff13-${peer}-`));
    dir = tmp;
    const r = await runFirefoxCall({ outDir: dir, dtls: '1.3', peer, timeoutMs: 150_000, mediaSeconds: 3 });
    if (!r.netns) t.comment('unshare -n not permitted: ran in the host network namespace');
    t.equal(r.exitCode, 0, 'harness exit code');
  }
  t.teardown(() => {
    if (tmp && !process.env.GH_KEEP_CAPTURE) rmSync(tmp, { recursive: true, force: true });
  });
  await checkDtls13Capture(t, dir);
}

async function checkDtls13Capture(t: Test, dir: string): Promise<void> {
  const run: RunInfo = JSON.parse(readFileSync(join(dir, 'run.json'), 'utf8'));
  const report: PageReport = JSON.parse(readFileSync(join(dir, 'report.json'), 'utf8'));
  t.ok(report.ok, 'page reported success: ' + JSON.stringify(report.errors));
  t.equal(report.missing?.length ?? -1, 0, 'every message arrived intact (in-page SHA-256 check)');
  // Report completeness for the pipeline: every sent message has size + SHA-256.
  t.ok(report.sent.length >= 20, 'messages sent');
  t.ok(
    report.sent.every((s) => /^[0-9a-f]{64}$/.test(s.sha256) && s.size >= 0 && s.label),
    'sent records complete',
  );
  t.ok(
    report.sent.some((s) => s.kind === 'binary' && s.size > 100_000),
    'a >100 KB binary object',
  );
  t.ok(
    report.sent.some((s) => s.label === 'unordered'),
    'unordered channel messages',
  );
  t.ok(report.sent.some((s) => s.from === 'pc1') && report.sent.some((s) => s.from === 'pc2'), 'both directions');

  const keys = parseKeylog(readFileSync(join(dir, 'keylog.txt'), 'utf8'));
  t.ok(keys.size >= 1, 'key log has at least one association');
  for (const [cr, s] of keys) {
    for (const l of [
      'CLIENT_HANDSHAKE_TRAFFIC_SECRET',
      'SERVER_HANDSHAKE_TRAFFIC_SECRET',
      'CLIENT_TRAFFIC_SECRET_0',
      'SERVER_TRAFFIC_SECRET_0',
      'EXPORTER_SECRET',
    ]) {
      t.ok(s.has(l), `${l} logged for ${cr.slice(0, 8)}…`);
    }
  }

  const dgrams = legDatagrams(join(dir, 'capture.pcap'), run.turn.port);
  const legs = new Set(dgrams.map((d) => d.leg));
  t.ok(legs.has('client') && legs.has('relay'), 'captured both the TURN client legs and the relay leg');

  const flows = analyse(dgrams, keys).filter((f) => f.clientRandom);
  t.ok(flows.length >= 3, `DTLS seen on >= 3 flows (2 client legs + relay leg), got ${flows.length}`);
  for (const f of flows) {
    t.test(`${f.leg} flow ${f.flow}`, async (t) => {
      t.ok(keys.has(f.clientRandom!), 'association found in the key log by client_random');
      t.ok(f.suite === 0x1301 || f.suite === 0x1302 || f.suite === 0x1303, `DTLS 1.3 suite 0x${f.suite?.toString(16)}`);
      t.equal(f.failures, 0, 'every unified-header record authenticates');
      const sum = (re: RegExp) =>
        Object.entries(f.counts)
          .filter(([k]) => re.test(k))
          .reduce((a, [, v]) => a + v, 0);
      t.ok(sum(new RegExp(`^c2s/e2/ct${CT_HANDSHAKE}$`)) > 0, 'client encrypted handshake (epoch 2) decrypted');
      t.ok(sum(new RegExp(`^s2c/e2/ct${CT_HANDSHAKE}$`)) > 0, 'server encrypted handshake (epoch 2) decrypted');
      t.ok(sum(new RegExp(`^c2s/e\\d+/ct${CT_APPLICATION_DATA}$`)) > 10, 'client application data decrypted');
      t.ok(sum(new RegExp(`^s2c/e\\d+/ct${CT_APPLICATION_DATA}$`)) > 10, 'server application data decrypted');
      t.ok(f.sctp.c2s > 0 && f.sctp.s2c > 0, `SCTP packets (port 5000) in both directions: ${JSON.stringify(f.sctp)}`);
      // KeyUpdate: if one was seen, later epochs must have decrypted too.
      if (f.keyUpdates > 0) t.ok(f.maxEpoch > 3, 'records after KeyUpdate decrypted in the next epoch');
      else t.equal(f.maxEpoch, 3, 'no KeyUpdate: application data stays in epoch 3');
      if (report.media) {
        t.ok(f.srtpProfile !== undefined, `use_srtp profile read from the decrypted EncryptedExtensions: ${f.srtpProfile}`);
        const exporter = keys.get(f.clientRandom!)!.get('EXPORTER_SECRET')!;
        const r = srtpCheck(
          dgrams.filter((d) => d.flow === f.flow),
          f.client!,
          exporter,
          f.srtpProfile ?? 0,
        );
        t.ok(r.ok > 50, `SRTP packets authenticate with keys from the DTLS 1.3 exporter (dtls13 labels): ${r.ok}`);
        t.equal(r.bad, 0, 'no SRTP packet fails');
      }
      t.comment(`records: ${JSON.stringify(f.counts)} acks=${f.ackRecords} alerts=${sum(new RegExp(`ct${CT_ALERT}$`))}`);
    });
  }
}

const reuse = process.env.GH_FIREFOX_CAPTURE;
t.test(
  'Firefox ESR DTLS 1.3 call: every protected record decrypts from the key log',
  {
    timeout: 300_000,
    skip: reuse ? false : missing,
  },
  (t) => dtls13Call(t, 'none'),
);

t.test(
  "Firefox ESR ↔ Chromium DTLS 1.3 call: decrypts from Firefox's key log alone",
  {
    timeout: 300_000,
    skip: reuse ? 'capture reuse mode' : missing || peerSkip(t, 'chromium'),
  },
  (t) => dtls13Call(t, 'chromium'),
);

t.test(
  'Firefox ESR DTLS 1.2 variant of the harness',
  {
    timeout: 300_000,
    skip: missing || (process.env.GH_FIREFOX_CAPTURE ? 'capture reuse mode' : false),
  },
  async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'gh-e2e-ff12-'));
    t.teardown(() => {
      if (!process.env.GH_KEEP_CAPTURE) rmSync(dir, { recursive: true, force: true });
    });
    const r = await runFirefoxCall({ outDir: dir, dtls: '1.2', timeoutMs: 150_000, mediaSeconds: 1 });
    t.equal(r.exitCode, 0, 'harness exit code');
    t.ok(r.report.ok, 'page reported success: ' + JSON.stringify(r.report.errors));
    const keylog = readFileSync(r.keylog, 'utf8');
    t.match(keylog, /^CLIENT_RANDOM [0-9a-f]{64} [0-9a-f]{96}$/m, 'DTLS 1.2 master secret logged (CLIENT_RANDOM)');
    t.notMatch(keylog, /CLIENT_TRAFFIC_SECRET_0/, 'no DTLS 1.3 secrets');
    const dgrams = legDatagrams(r.pcap, r.run.turn.port);
    // RFC 6347 §4.1: DTLS 1.2 records: content type 23, version 0xfefd, epoch >= 1.
    const app12 = dgrams.filter(
      (d) => d.payload.length > 13 && d.payload[0] === 23 && d.payload.readUInt16BE(1) === 0xfefd && d.payload.readUInt16BE(3) >= 1,
    );
    t.ok(app12.length > 10, `DTLS 1.2 application_data records captured (${app12.length})`);
    // Only the call's own flows: with tap running two files at once, other tests' traffic
    // can share the loopback capture when the harness could not use its own namespace.
    const callFlows = new Set(app12.map((d) => d.flow));
    t.notOk(
      dgrams.some((d) => callFlows.has(d.flow) && d.payload.length > 0 && isUnifiedHeader(d.payload[0]!)),
      'no DTLS 1.3 unified headers on the call flows',
    );
  },
);
