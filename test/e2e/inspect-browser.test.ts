/**
 * End-to-end proof of `gatehouse inspect` on a real browser call: Firefox ESR (two
 * RTCPeerConnections in one page, iceTransportPolicy 'relay' through coturn, DTLS 1.3 and
 * DTLS 1.2 runs) captured on loopback with its NSS key log by scripts/browser/harness.ts.
 * `node bin/gatehouse.js inspect capture.pcap --keys keylog.txt` must, on the relay leg
 * (relayed address ↔ relayed address, plain UDP) and on each TURN-wrapped client leg
 * (ChannelData / Send / Data indications), recover every data-channel message the page
 * sent — including the >100 KB object — with the SHA-256 the page reported, and
 * authenticate every SRTP/SRTCP packet (none undecryptable, and at least as many RTP
 * packets per SSRC as the receiving browser counted); nothing on any flow of the capture
 * is undecryptable.
 *
 * Needs firefox-esr, turnserver (coturn), dumpcap; skipped when missing, a failure in CI.
 * GH_FIREFOX_CAPTURE=<dir> reuses an existing harness output directory (DTLS 1.3 run only).
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runFirefoxCall, type PageReport } from '../../scripts/browser/harness.js';
import { peerSkip } from './helpers/require-peer.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
// Missing peers: the tests are skipped with the reason, and in CI the file fails.
const missing = peerSkip(t, 'firefox-esr', 'turnserver', 'dumpcap');

type Eve = Record<string, unknown> & { event_type: string; flow_id: number; gatehouse?: Record<string, unknown> };

function gatehouse(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((res, rej) => {
    const p = spawn(process.execPath, [join(ROOT, 'bin', 'gatehouse.js'), ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let stderr = '';
    p.stdout.on('data', (d: Buffer) => out.push(d));
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => p.kill('SIGKILL'), 180_000);
    p.on('error', rej);
    p.on('close', (code) => {
      clearTimeout(timer);
      res({ code, stdout: Buffer.concat(out).toString(), stderr });
    });
  });
}

const count = (xs: string[]) => {
  const m = new Map<string, number>();
  for (const x of xs) m.set(x, (m.get(x) ?? 0) + 1);
  return [...m.entries()].sort((a, b) => a[0].localeCompare(b[0]));
};

for (const dtls of ['1.3', '1.2'] as const) {
  t.test(`Firefox DTLS ${dtls} call: every message and every SRTP packet on every leg`, { skip: missing, timeout: 420_000 }, async (t) => {
    let dir: string;
    let pcap: string;
    let keylog: string;
    let report: PageReport;
    const reuse = dtls === '1.3' ? process.env.GH_FIREFOX_CAPTURE : undefined;
    if (reuse && existsSync(join(reuse, 'capture.pcap'))) {
      dir = reuse;
      pcap = join(dir, 'capture.pcap');
      keylog = join(dir, 'keylog.txt');
      report = JSON.parse(readFileSync(join(dir, 'report.json'), 'utf8')) as PageReport;
    } else {
      dir = mkdtempSync(join(tmpdir(), `gh-inspect-ff${dtls}-`));
      t.teardown(() => rmSync(dir, { recursive: true, force: true }));
      const r = await runFirefoxCall({ outDir: dir, dtls, timeoutMs: 150_000 });
      t.ok(r.report.ok, `page reported ok: ${JSON.stringify(r.report.errors)}`);
      if (!r.report.ok) return;
      pcap = r.pcap;
      keylog = r.keylog;
      report = r.report;
    }
    const sent = report.sent;
    t.ok(sent.length >= 10, 'the page sent messages');
    const big = sent.find((m) => m.size > 100_000);
    t.ok(big, 'the page sent a >100 KB object');

    const run = await gatehouse(['inspect', pcap, '--keys', keylog]);
    t.equal(run.code, 0, `exit 0; stderr: ${run.stderr}`);
    const evs = run.stdout
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as Eve);
    // Every DTLS record and SRTP packet of the capture authenticates, on every flow: the
    // capture holds only the call (the harness turns Firefox's background networking off;
    // its telemetry DNS lookup once made this flaky), and traffic that is not DTLS must not
    // be reported as undecryptable DTLS/SRTP. A failure names the packets (flow, endpoints,
    // what, reason, count, time).
    const undecryptable = evs.filter((e) => e.event_type === 'undecryptable');
    t.match(run.stderr, /undecryptable: dtls=0 srtp=0\b/, `no DTLS record or SRTP packet failed: ${JSON.stringify(undecryptable)}`);
    t.same(undecryptable, [], `no undecryptable event on any flow: ${JSON.stringify(undecryptable)}`);
    const byFlow = new Map<number, Eve[]>();
    for (const e of evs) byFlow.set(e.flow_id, [...(byFlow.get(e.flow_id) ?? []), e]);
    const callFlows = [...byFlow.values()].filter((es) => es.some((e) => e.event_type === 'dtls.handshake'));
    const wrapped = callFlows.filter((es) => es[0]!.gatehouse?.leg === 'turn');
    const relay = callFlows.filter((es) => es[0]!.gatehouse?.leg !== 'turn');
    t.ok(relay.length >= 1, `relay leg present (${relay.length})`);
    t.ok(wrapped.length >= 1, `TURN-wrapped leg present (${wrapped.length})`);

    // Receiver-side counts from the browsers' stats: inbound-rtp packetsReceived per SSRC.
    const received = new Map<number, number>();
    for (const list of Object.values(report.stats ?? {})) {
      for (const s of list)
        if (s.type === 'inbound-rtp' && typeof s.ssrc === 'number') received.set(s.ssrc, Number(s.packetsReceived ?? 0));
    }

    for (const [i, es] of callFlows.entries()) {
      const leg = `${es[0]!.gatehouse?.leg === 'turn' ? 'wrapped' : 'relay'} leg #${i}`;
      const msgs = es
        .filter((e) => e.event_type === 'datachannel.message')
        .map((e) => e.datachannel as { sha256: string; size: number; label: string });
      t.same(
        count(msgs.map((m) => `${m.label}:${m.sha256}`)),
        count(sent.map((m) => `${m.label}:${m.sha256}`)),
        `${leg}: every message, byte-exact`,
      );
      t.ok(
        msgs.some((m) => m.sha256 === big!.sha256 && m.size === big!.size),
        `${leg}: the ${big!.size}-byte object`,
      );
      const legUndecryptable = es.filter((e) => e.event_type === 'undecryptable');
      t.same(legUndecryptable, [], `${leg}: nothing undecryptable: ${JSON.stringify(legUndecryptable)}`);
      if (report.media !== false) {
        const rtp = es.filter((e) => e.event_type === 'rtp.packet').map((e) => e.rtp as { ssrc: number; rtcp?: boolean; index: number });
        t.ok(rtp.length > 0, `${leg}: SRTP decrypted`);
        const perSsrc = new Map<number, Set<number>>();
        for (const p of rtp) if (!p.rtcp) perSsrc.set(p.ssrc, (perSsrc.get(p.ssrc) ?? new Set()).add(p.index));
        for (const [ssrc, n] of received) {
          if (n === 0) continue;
          t.ok(
            (perSsrc.get(ssrc)?.size ?? 0) >= n,
            `${leg}: SSRC ${ssrc}: ${perSsrc.get(ssrc)?.size ?? 0} authenticated ≥ ${n} received by the browser`,
          );
        }
        t.ok(
          es.some((e) => e.event_type === 'rtp.stream'),
          `${leg}: streams reported`,
        );
      }
    }
  });
}
