// Issue 9 (media): a recorded call with real Opus audio. ffmpeg encodes a 3 s 440 Hz sine
// with libopus; `gatehouse endpoint --audio-file` (compliant agent, keys escrowed) sends
// its packets as RTP (RFC 7587) through a spawned `gatehouse serve` whose `record` rule
// selects the flow, to a plain werift answerer. The gateway never sees SDP (no
// payload-type map): the recorder holds the stream's first packets until the codec is
// known, so audio-SSRC.opus starts at the first packet. Proof: ffprobe reads opus of the
// sent duration (±60 ms), `ffmpeg -v error -f null` is silent, the decoded audio matches
// the sent file (duration ±60 ms, RMS level ±1.5 dB, 440 Hz Goertzel power, normalised
// cross-correlation), and the RTP pcap carries the flow's real ports: tshark decodes it
// with `-d udp.port==PEER_PORT,rtp`.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runEndpoint } from '../../src/cli/endpoint.js';
import { startGatehouse } from './helpers/turn-servers.js';
import { closeLeftoverUdpSockets, pinGateway } from './helpers/escrow-events.js';
import { peerSkip } from './helpers/require-peer.js';
import { decodeErrors, ffmpeg, ffprobe, tsharkSeqs } from '../unit/record/media-helpers.js';
import { captureIo } from './helpers/run.js';

const skip = peerSkip(t, 'ffmpeg', 'ffprobe', 'tshark');

const RULES = `keys:
  required: true
  deadline: 20s
  unverified: hold
  media: true
  data: true
  block_for: 5m
rules:
  - { id: rec-alice, when: { user: [alice] }, action: record }
`;

/** Decoded mono 48 kHz PCM of a file (s16le through ffmpeg), as floats in [-1, 1). */
function pcm(file: string): Float64Array {
  const raw = execFileSync(
    'ffmpeg',
    ['-hide_banner', '-nostdin', '-v', 'error', '-i', file, '-ac', '1', '-ar', '48000', '-f', 's16le', '-'],
    {
      maxBuffer: 64 << 20,
      timeout: 120_000,
    },
  );
  const out = new Float64Array(raw.length >> 1);
  for (let i = 0; i < out.length; i++) out[i] = raw.readInt16LE(i * 2) / 32768;
  return out;
}

function rms(x: Float64Array): number {
  let s = 0;
  for (const v of x) s += v * v;
  return Math.sqrt(s / x.length);
}

/** Share of the signal's power at freq (Goertzel): 1 for a pure sine on the bin, ~0 elsewhere. */
function toneShare(x: Float64Array, freq: number, rate = 48000): number {
  const w = (2 * Math.PI * freq) / rate;
  const c = 2 * Math.cos(w);
  let s1 = 0;
  let s2 = 0;
  let e = 0;
  for (const v of x) {
    const s0 = v + c * s1 - s2;
    s2 = s1;
    s1 = s0;
    e += v * v;
  }
  const p = s1 * s1 + s2 * s2 - c * s1 * s2; // |X(freq)|^2
  return (2 * p) / (x.length * e);
}

/** Highest normalised cross-correlation of b against a over lags within ±maxLag samples. */
function bestCorrelation(a: Float64Array, b: Float64Array, maxLag: number): { r: number; lag: number } {
  let best = { r: -1, lag: 0 };
  for (let lag = -maxLag; lag <= maxLag; lag++) {
    let sab = 0;
    let saa = 0;
    let sbb = 0;
    for (let i = 0; i < a.length; i++) {
      const j = i + lag;
      if (j < 0 || j >= b.length) continue;
      sab += a[i]! * b[j]!;
      saa += a[i]! * a[i]!;
      sbb += b[j]! * b[j]!;
    }
    const r = saa > 0 && sbb > 0 ? sab / Math.sqrt(saa * sbb) : 0;
    if (r > best.r) best = { r, lag };
  }
  return best;
}

t.test(
  'real Opus through gatehouse serve is recorded as playable Ogg/Opus from the first packet',
  { skip, timeout: 240_000 },
  async (t) => {
    const work = mkdtempSync(join(tmpdir(), 'gh-rec-opus-'));
    const src = join(work, 'sent.opus');
    ffmpeg(['-f', 'lavfi', '-i', 'sine=frequency=440:duration=3', '-c:a', 'libopus', '-b:a', '48k', '-frame_duration', '20', src]);
    const wrong = join(work, 'wrong.opus');
    ffmpeg(['-f', 'lavfi', '-i', 'sine=frequency=660:duration=3', '-c:a', 'libopus', '-b:a', '48k', '-frame_duration', '20', wrong]);

    const gh = await startGatehouse({
      rules: RULES,
      users: [{ name: 'alice', password: 'alice-secret-pw' }],
      transports: ['udp'],
      logLevel: 'info',
      keepWorkDir: true,
    });
    let stopped = false;
    t.teardown(async () => {
      closeLeftoverUdpSockets();
      if (!stopped) await gh.stop();
      rmSync(gh.workDir, { recursive: true, force: true });
      rmSync(work, { recursive: true, force: true });
    });
    const gw = await pinGateway(gh.adminUrl!);
    const sig = join(work, 'signal');
    const off = captureIo();
    const ans = captureIo();
    const [rcOffer, rcAnswer] = await Promise.all([
      runEndpoint(
        [
          '--role',
          'offer',
          '--signal-dir',
          sig,
          '--turn',
          gh.url('udp'),
          '--user',
          'alice',
          '--password',
          'alice-secret-pw',
          '--gateway-cert-fingerprint',
          gw.fingerprint,
          '--gateway-cert-url',
          gw.url,
          '--consent',
          'always',
          '--audio-file',
          src,
          '--hold',
          '2',
          '--timeout',
          '90',
          '--json',
        ],
        off.io,
      ),
      runEndpoint(['--role', 'answer', '--signal-dir', sig, '--no-escrow', '--hold', '9', '--timeout', '90', '--json'], ans.io),
    ]);
    t.equal(rcOffer, 0, `offerer ok: ${off.err()}`);
    t.equal(rcAnswer, 0, `answerer ok: ${ans.err()}`);
    const so = JSON.parse(off.out()) as { rtpSent: number; audioFile?: { packets: number; durationMs: number } };
    const sa = JSON.parse(ans.out()) as { rtpReceived: number };
    const srcPackets = readOpusPacketCount(src);
    t.equal(so.audioFile?.packets, srcPackets, `the agent sent every Opus packet of the file (${srcPackets})`);
    t.ok(sa.rtpReceived >= srcPackets - 2, `the answerer received the audio (${sa.rtpReceived} RTP packets)`);

    // Stopping serve seals the recording (it waits for the writes).
    await gh.stop();
    stopped = true;
    const recs = join(gh.dataDir!, 'recordings');
    const dirs = readdirSync(recs).filter((d) => !d.endsWith('.json') && d !== 'certs');
    t.equal(dirs.length, 1, `one recording: ${dirs.join(', ')}`);
    const rdir = join(recs, dirs[0]!);
    const files = readdirSync(rdir);
    const audio = files.filter((f) => /^audio-\d+\.opus$/.test(f));
    t.equal(audio.length, 1, `an audio-*.opus is recorded: ${files.join(', ')}`);
    const ssrc = audio[0]!.slice(6, -5);
    t.ok(files.includes(`rtp-${ssrc}.pcap`), 'and the RTP pcap of the same SSRC');
    const manifest = JSON.parse(readFileSync(join(rdir, 'manifest.json'), 'utf8')) as {
      flow: { client: { ip: string; port: number }; peer: { ip: string; port: number } };
      streams?: { ssrc: number; codec: string; classifiedBy: string | null; file: string | null }[];
    };
    const st = manifest.streams?.find((s) => String(s.ssrc) === ssrc);
    t.same(st && { codec: st.codec, file: st.file }, { codec: 'opus', file: audio[0] }, 'manifest: the stream is Opus with its file');

    // ffprobe / ffmpeg.
    const recFile = join(rdir, audio[0]!);
    const p = ffprobe(recFile);
    const ps = ffprobe(src);
    t.equal(p.codec, 'opus', 'ffprobe reads opus');
    const dDur = Math.abs(p.duration - ps.duration);
    t.ok(dDur <= 0.06, `ffprobe duration ${p.duration} s vs sent ${ps.duration} s (difference ${(dDur * 1000).toFixed(1)} ms)`);
    t.equal(decodeErrors(recFile), '', 'ffmpeg -v error -f null is silent');
    // Every packet from the first: the Ogg holds as many audio packets as were sent (plus at
    // most one concealment frame closing the stream).
    const recPackets = readOpusPacketCount(recFile);
    t.ok(recPackets >= srcPackets && recPackets <= srcPackets + 1, `recorded ${recPackets} Opus packets of ${srcPackets} sent`);

    // The decoded audio matches what was sent.
    const a = pcm(src);
    const b = pcm(recFile);
    const dDec = Math.abs(a.length - b.length) / 48;
    t.ok(dDec <= 60, `decoded duration ${b.length / 48} ms vs sent ${a.length / 48} ms (difference ${dDec.toFixed(1)} ms)`);
    const mid = (x: Float64Array) => x.subarray(24000, 24000 + 96000); // 0.5 s .. 2.5 s
    const levelDb = 20 * Math.log10(rms(mid(b)) / rms(mid(a)));
    t.ok(Math.abs(levelDb) <= 1.5, `RMS level ${rms(mid(b)).toFixed(4)} vs sent ${rms(mid(a)).toFixed(4)} (${levelDb.toFixed(2)} dB)`);
    const share = toneShare(mid(b), 440);
    t.ok(share >= 0.9, `440 Hz carries ${(share * 100).toFixed(1)} % of the recorded power`);
    // Both files start at the encoder's first packet with the same pre-skip (312): aligned
    // within 10 ms (a sine repeats every 109 samples, so the lag is only known modulo that).
    const corr = bestCorrelation(a.subarray(24000, 72000), b.subarray(24000), 480);
    t.ok(corr.r >= 0.9, `normalised cross-correlation with the sent audio ${corr.r.toFixed(4)} at lag ${corr.lag} samples`);
    // The checks discriminate: a different signal fails them.
    const w = pcm(wrong);
    const wrongShare = toneShare(mid(w), 440);
    t.ok(wrongShare < 0.1, `a 660 Hz stream fails the 440 Hz check (${(wrongShare * 100).toFixed(2)} %)`);

    // The pcap carries the flow's real ports: tshark decodes it as RTP on the peer's port.
    // A flow is allocation × peer address (RFC 8656 §9): ICE may try several of the peer's
    // candidate ports on that address, so the manifest names the port seen last and each
    // packet carries the port it really went to.
    const candPorts = [...readFileSync(join(sig, 'answer.json'), 'utf8').matchAll(/a=candidate:\S+ \d+ udp \d+ (\S+) (\d+) typ/gi)].map(
      (m) => Number(m[2]),
    );
    t.ok(
      candPorts.includes(manifest.flow.peer.port),
      `manifest peer port ${manifest.flow.peer.port} is an answerer candidate (${candPorts.join(', ')})`,
    );
    const pcap = join(rdir, `rtp-${ssrc}.pcap`);
    const ports = execFileSync('tshark', ['-r', pcap, '-T', 'fields', '-e', 'udp.srcport', '-e', 'udp.dstport'], {
      encoding: 'utf8',
      env: { ...process.env, HOME: process.env.HOME ?? '/tmp' },
    })
      .split('\n')
      .filter((l) => l.trim())
      .map((l) => l.split('\t').map(Number));
    const peerPort = ports[0]?.[1] ?? 0;
    t.ok(peerPort > 0 && candPorts.includes(peerPort), `the media went to the answerer's candidate port ${peerPort}`);
    t.ok(
      ports.length > 0 && ports.every(([s, d]) => s === manifest.flow.client.port && d === peerPort),
      `every packet client ${manifest.flow.client.port} → peer ${peerPort}: ${JSON.stringify([...new Set(ports.map((x) => x.join('>')))])}`,
    );
    t.ok(manifest.flow.client.port > 0, 'client port is real');
    const seqs = tsharkSeqs(pcap, peerPort);
    t.equal(seqs.length, srcPackets, `tshark -d udp.port==${peerPort},rtp decodes every packet as RTP`);
    t.ok(
      seqs.every((s, i) => i === 0 || s === ((seqs[i - 1]! + 1) & 0xffff)),
      'consecutive RTP sequence numbers',
    );
  },
);

function readOpusPacketCount(file: string): number {
  const b = readFileSync(file);
  let n = 0;
  let off = 0;
  while (off + 27 <= b.length && b.toString('ascii', off, off + 4) === 'OggS') {
    const nseg = b[off + 26]!;
    let len = 0;
    for (let i = 0; i < nseg; i++) {
      const l = b[off + 27 + i]!;
      len += l;
      if (l < 255) n++;
    }
    off += 27 + nseg + len;
  }
  return n - 2; // OpusHead, OpusTags
}
