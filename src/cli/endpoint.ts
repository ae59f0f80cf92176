/**
 * `gatehouse endpoint`: place or answer a test/demo call through a Gatehouse gateway as
 * a compliant endpoint (key escrow agent, src/endpoint/agent.ts), or as a plain werift
 * peer (--no-escrow). Signalling is a JSON file exchange in a directory (offer.json /
 * answer.json), which is enough for two processes on one machine.
 *
 * Public API: runEndpoint(argv, io): Promise<number>, ENDPOINT_HELP
 */
import { parseArgs } from 'node:util';
import { isIP } from 'node:net';
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, renameSync, writeFileSync, existsSync } from 'node:fs';
import { basename, join } from 'node:path';
import { createInterface } from 'node:readline';
import type { Readable, Writable } from 'node:stream';
import { MediaStreamTrack, RTCPeerConnection, RtpHeader, RtpPacket, type RTCDataChannel } from 'werift';
import {
  createEscrowPeerConnection,
  createPcpEscrowPeerConnection,
  parseTurnUrl,
  type ConsentRequest,
  type EscrowAgent,
} from '../endpoint/agent.js';
import { parsePcpServer } from '../endpoint/pcp-client.js';
import { GatewayTrust, TrustError } from '../endpoint/trust.js';
import { readOggOpus, type OggOpusFile } from '../endpoint/ogg-opus-file.js';
import { systemClock } from '../util/clock.js';

export const ENDPOINT_HELP = `Usage: gatehouse endpoint --role offer|answer --signal-dir DIR [options]

Place (offer) or answer a WebRTC call through a Gatehouse gateway as a compliant
endpoint: the DTLS keys of the call are escrowed to the gateway (key-escrow.md) when it
asks, is trusted, and consent is given. Signalling: DIR/offer.json and DIR/answer.json.

Options:
  --role offer|answer                 place or answer the call (required)
  --signal-dir DIR                    signalling directory shared by both sides (required)
  --turn turn:HOST:PORT[?transport=udp|tcp]   the gateway's TURN address
  --user U --password P               TURN long-term credentials
  --pcp ADDRESS[:PORT]                the firewall path instead of TURN: MAP each UDP host
                                      candidate on this PCP server (RFC 6887, port 5351 by
                                      default), advertise the mapped address as a srflx
                                      candidate, answer WRITE_KEYS_REQUEST over PCP, delete
                                      the mappings at exit (escrow over PCP needs RFC 7652
                                      authentication: --pcp-cert, --pcp-key, --pcp-ca)
  --pcp-cert FILE --pcp-key FILE      the endpoint's client certificate and key (PEM) for
                                      RFC 7652 EAP-TLS with the PCP server
  --pcp-ca FILE                       the CA (PEM) the PCP server's EAP-TLS certificate must
                                      chain to
  --gateway-cert-fingerprint HEX      trust a gateway certificate by SHA-256 (repeatable)
  --gateway-ca FILE                   trust gateway certificates issued by this CA (PEM)
  --gateway-cert-url URL              where to fetch the gateway certificate
                                      (default http://127.0.0.1:8080/v1/gateway/certificate)
  --gateway-cert FILE                 the gateway certificate PEM (instead of the URL)
  --consent always|ask|never          answer to key requests (default ask; ask reads y/n on stdin)
  --decline-reason TEXT               KEY-DECLINE reason (at most 128 bytes)
  --no-escrow                         plain werift peer (no TURN unless --turn, no agent)
  --ice-address ADDRESS               the plain peer's host candidates on this IPv4 address
                                      (default 127.0.0.1, a loopback demo)
  --send-file FILE                    send FILE over a data channel "file:NAME": a JSON text
                                      header {name,size,sha256}, then binary chunks (as the
                                      WebRTC samples and Snapdrop do)
  --chunk-size BYTES                  bytes per binary message of --send-file (default 16384;
                                      0: the whole file in one message, up to 256 KiB)
  --receive-dir DIR                   save files received over data channels here
  --audio-packets N                   send N synthetic RTP audio packets (20 ms apart)
  --audio-file FILE.opus              send the Opus packets of an Ogg/Opus file (RFC 7845) as
                                      RTP audio (RFC 7587), paced by their durations; e.g.
                                      ffmpeg -f lavfi -i sine=frequency=440:duration=3 -c:a libopus a.opus
  --message TEXT                      send TEXT over a data channel "chat"
  --timeout SECONDS                   give up after this long (default 60)
  --hold SECONDS                      keep the call up this long after the transfers (default 1)
  --json                              print a JSON summary on stdout at the end
  --help                              this text

Exit status: 0 call done, 1 call failed, 2 usage error.
`;

interface Io {
  stdout: Writable;
  stderr: Writable;
  stdin?: Readable;
}

const CHUNK = 16 * 1024;
const MAX_MESSAGE = 256 * 1024;

function usage(io: Io, msg: string): number {
  io.stderr.write(`gatehouse endpoint: ${msg}\nRun "gatehouse endpoint --help" for usage.\n`);
  return 2;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

async function waitFile(path: string, deadline: number): Promise<string> {
  while (!existsSync(path)) {
    if (systemClock.now() > deadline) throw new Error(`timed out waiting for ${path}`);
    await sleep(100);
  }
  return readFileSync(path, 'utf8');
}

function writeAtomic(path: string, text: string): void {
  writeFileSync(path + '.tmp', text);
  renameSync(path + '.tmp', path);
}

async function gathered(pc: RTCPeerConnection): Promise<void> {
  if (pc.iceGatheringState === 'complete') return;
  await new Promise<void>((resolve) => {
    const sub = pc.iceGatheringStateChange.subscribe((s) => {
      if (s === 'complete') {
        sub.unSubscribe();
        resolve();
      }
    });
  });
}

function waitOpen(dc: RTCDataChannel, deadline: number): Promise<void> {
  if (dc.readyState === 'open') return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`data channel ${dc.label} did not open`)), Math.max(0, deadline - systemClock.now()));
    dc.stateChanged.subscribe((s) => {
      if (s === 'open') {
        clearTimeout(timer);
        resolve();
      }
    });
  });
}

function askConsent(io: Io): (r: ConsentRequest) => Promise<boolean> {
  return (r) =>
    new Promise((resolve) => {
      const input = io.stdin ?? process.stdin;
      io.stderr.write(
        `Gateway ${r.gateway.subject} (SHA-256 ${r.gateway.fingerprint}) asks for the keys of the call with ${r.call.peer}` +
          ` (media ${r.wants.media ? 'yes' : 'no'}, data ${r.wants.data ? 'yes' : 'no'}, required ${r.wants.required ? 'yes' : 'no'}). Hand them over? [y/N] `,
      );
      const rl = createInterface({ input, terminal: false });
      const timer = setTimeout(
        () => {
          rl.close();
          resolve(false);
        },
        Math.max(1000, r.deadline - systemClock.now()),
      );
      rl.once('line', (l) => {
        clearTimeout(timer);
        rl.close();
        resolve(/^\s*y(es)?\s*$/i.test(l));
      });
    });
}

interface Summary {
  role: string;
  connected: boolean;
  escrow: Array<{ kind: string; method: string; peer: string; associations: string[]; statuses: number[] | null; error?: string }>;
  untrusted: string[];
  sentFile?: { name: string; size: number; sha256: string };
  receivedFiles: Array<{ name: string; size: number; sha256: string; ok: boolean }>;
  /** Binary bytes received on file channels, whole files or not (what a blocked transfer let through). */
  receivedBytes: number;
  messages: string[];
  rtpSent: number;
  rtpReceived: number;
  /** What --audio-file sent: packets, and the audio's duration in ms (RTP clock, 48 kHz). */
  audioFile?: { packets: number; durationMs: number };
  /** --pcp: the mappings made and the escrow requests sent over PCP. */
  pcp?: {
    mappings: Array<{ internal: string; external: string; lifetime: number }>;
    escrow: Array<{ kind: string; mapping: string; associations: string[]; result: number | null }>;
  };
}

export async function runEndpoint(argv: string[], io: Io): Promise<number> {
  let v: Record<string, string | boolean | string[] | undefined>;
  try {
    v = parseArgs({
      args: argv,
      options: {
        role: { type: 'string' },
        'signal-dir': { type: 'string' },
        turn: { type: 'string' },
        pcp: { type: 'string' },
        'pcp-cert': { type: 'string' },
        'pcp-key': { type: 'string' },
        'pcp-ca': { type: 'string' },
        'ice-address': { type: 'string' },
        user: { type: 'string' },
        password: { type: 'string' },
        'gateway-cert-fingerprint': { type: 'string', multiple: true },
        'gateway-ca': { type: 'string' },
        'gateway-cert-url': { type: 'string' },
        'gateway-cert': { type: 'string' },
        consent: { type: 'string' },
        'decline-reason': { type: 'string' },
        'no-escrow': { type: 'boolean' },
        'send-file': { type: 'string' },
        'chunk-size': { type: 'string' },
        'receive-dir': { type: 'string' },
        'audio-packets': { type: 'string' },
        'audio-file': { type: 'string' },
        message: { type: 'string' },
        timeout: { type: 'string' },
        hold: { type: 'string' },
        json: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
      allowPositionals: false,
    }).values as typeof v;
  } catch (e) {
    return usage(io, (e as Error).message);
  }
  if (v.help) {
    io.stdout.write(ENDPOINT_HELP);
    return 0;
  }
  const role = v.role as string | undefined;
  if (role !== 'offer' && role !== 'answer') return usage(io, '--role offer|answer is required');
  const dir = v['signal-dir'] as string | undefined;
  if (!dir) return usage(io, '--signal-dir is required');
  const escrow = !v['no-escrow'];
  const turn = v.turn as string | undefined;
  if (turn) {
    try {
      parseTurnUrl(turn);
    } catch {
      return usage(io, `bad --turn ${turn}`);
    }
    if (!v.user || !v.password) return usage(io, '--turn needs --user and --password');
  }
  const pcpArg = v.pcp as string | undefined;
  let pcpServer: { server: string; port: number } | null = null;
  if (pcpArg !== undefined) {
    try {
      pcpServer = parsePcpServer(pcpArg);
    } catch {
      return usage(io, `bad --pcp ${pcpArg}`);
    }
    if (!escrow) return usage(io, "--pcp is the agent's firewall path (drop --no-escrow)");
    if (turn) return usage(io, '--pcp and --turn exclude each other (TURN relays everything; PCP maps host candidates)');
  }
  const pcpTls = ['pcp-cert', 'pcp-key', 'pcp-ca'].filter((k) => v[k] !== undefined);
  if (pcpTls.length && (!pcpServer || pcpTls.length !== 3)) return usage(io, '--pcp-cert, --pcp-key and --pcp-ca go together, with --pcp');
  let eapTls: { cert: string; key: string; ca: string } | undefined;
  if (pcpTls.length) {
    try {
      eapTls = {
        cert: readFileSync(v['pcp-cert'] as string, 'utf8'),
        key: readFileSync(v['pcp-key'] as string, 'utf8'),
        ca: readFileSync(v['pcp-ca'] as string, 'utf8'),
      };
    } catch (e) {
      return usage(
        io,
        `--pcp-cert/--pcp-key/--pcp-ca: ${(e as NodeJS.ErrnoException).code ?? 'unreadable'} ${(e as NodeJS.ErrnoException).path ?? ''}`,
      );
    }
  }
  const iceAddress = v['ice-address'] as string | undefined;
  if (iceAddress !== undefined && (isIP(iceAddress) !== 4 || escrow || turn))
    return usage(io, '--ice-address is an IPv4 address, for the plain peer (--no-escrow) without --turn');
  if (escrow && !turn && !pcpServer) return usage(io, 'a compliant endpoint needs --turn or --pcp (or use --no-escrow)');
  const consentMode = (v.consent as string | undefined) ?? 'ask';
  if (!['always', 'ask', 'never'].includes(consentMode)) return usage(io, '--consent is always, ask or never');
  const timeoutS = Number(v.timeout ?? 60);
  const holdS = Number(v.hold ?? 1);
  const audioPackets = Number(v['audio-packets'] ?? 0);
  if (!(timeoutS > 0) || !(holdS >= 0) || !Number.isInteger(audioPackets) || audioPackets < 0)
    return usage(io, 'bad --timeout, --hold or --audio-packets');
  let audioFile: OggOpusFile | null = null;
  if (v['audio-file'] !== undefined) {
    if (audioPackets > 0) return usage(io, '--audio-file and --audio-packets exclude each other');
    try {
      audioFile = readOggOpus(readFileSync(v['audio-file'] as string));
    } catch (e) {
      return usage(io, `--audio-file: ${(e as Error).message}`);
    }
  }
  const chunkSize = Number(v['chunk-size'] ?? CHUNK);
  if (!Number.isInteger(chunkSize) || chunkSize < 0) return usage(io, 'bad --chunk-size');
  const deadline = systemClock.now() + timeoutS * 1000;

  let trust: GatewayTrust | null = null;
  let certSource: { pem: string } | { url: string } = {
    url: (v['gateway-cert-url'] as string | undefined) ?? 'http://127.0.0.1:8080/v1/gateway/certificate',
  };
  if (escrow) {
    try {
      const caPem = v['gateway-ca'] ? readFileSync(v['gateway-ca'] as string, 'utf8') : undefined;
      trust = new GatewayTrust({
        pinnedFingerprints: (v['gateway-cert-fingerprint'] as string[] | undefined) ?? [],
        ...(caPem ? { caPem } : {}),
      });
      if (v['gateway-cert']) certSource = { pem: readFileSync(v['gateway-cert'] as string, 'utf8') };
    } catch (e) {
      if (e instanceof TrustError) return usage(io, `${e.reason} (use --gateway-cert-fingerprint or --gateway-ca)`);
      return usage(io, (e as Error).message);
    }
  }

  // A file in one message (--chunk-size 0) needs the peer's a=max-message-size (RFC 8841 §6).
  const pcConfig = { iceUseIpv6: false, maxMessageSize: MAX_MESSAGE } as const;
  let pc: RTCPeerConnection;
  let agent: EscrowAgent | null = null;
  const summary: Summary = {
    role,
    connected: false,
    escrow: [],
    untrusted: [],
    receivedFiles: [],
    receivedBytes: 0,
    messages: [],
    rtpSent: 0,
    rtpReceived: 0,
  };
  if (escrow) {
    const common = {
      trust: trust!,
      gatewayCertificate: certSource,
      consent: consentMode === 'always' ? async () => true : consentMode === 'never' ? async () => false : askConsent(io),
      ...(v['decline-reason'] !== undefined ? { declineReason: v['decline-reason'] as string } : {}),
      pcConfig,
    };
    const made = pcpServer
      ? createPcpEscrowPeerConnection({ ...common, pcp: { server: pcpServer.server, port: pcpServer.port, ...(eapTls ? { eapTls } : {}) } })
      : createEscrowPeerConnection({
          turnUrl: turn!,
          username: v.user as string,
          password: v.password as string,
          ...common,
        });
    pc = made.pc;
    agent = made.agent;
    agent.on('untrusted', (e: { peer: string; reason: string }) => {
      summary.untrusted.push(e.reason);
      io.stderr.write(`gatehouse endpoint: gateway not trusted (${e.reason}); keys not sent\n`);
    });
    agent.on('error', (e: Error) => io.stderr.write(`gatehouse endpoint: escrow: ${e.message}\n`));
    agent.on('sent', (r: { peer: string; statuses: number[] | null; error?: string }) =>
      io.stderr.write(`gatehouse endpoint: keys sent for ${r.peer}: ${r.error ?? `KEY-STATUS ${JSON.stringify(r.statuses)}`}\n`),
    );
    agent.on('declined', (r: { peer: string }) => io.stderr.write(`gatehouse endpoint: KEY-DECLINE sent for ${r.peer}\n`));
    agent.on('pcpMapped', (m: { internal: string; external: string; lifetime: number }) =>
      io.stderr.write(`gatehouse endpoint: PCP mapping ${m.internal} -> ${m.external} (${m.lifetime} s)\n`),
    );
    agent.on('pcpSent', (r: { mapping: string; associations: string[]; result: number | null }) =>
      io.stderr.write(`gatehouse endpoint: keys sent over PCP for ${r.mapping}: result ${r.result ?? 'none'}\n`),
    );
    agent.on('pcpDeclined', (r: { mapping: string }) =>
      io.stderr.write(`gatehouse endpoint: KEY_DECLINE sent over PCP for ${r.mapping}\n`),
    );
    agent.on('pcpError', (e: Error) => io.stderr.write(`gatehouse endpoint: PCP: ${e.message}\n`));
  } else {
    const u = turn ? parseTurnUrl(turn) : null;
    pc = new RTCPeerConnection({
      ...pcConfig,
      iceServers: u ? [{ urls: turn!, username: v.user as string, credential: v.password as string }] : [],
      ...(u
        ? { iceTransportPolicy: 'relay' as const }
        : { iceInterfaceAddresses: { udp4: iceAddress ?? '127.0.0.1' }, iceAdditionalHostAddresses: [iceAddress ?? '127.0.0.1'] }),
    });
  }

  const recvDir = v['receive-dir'] as string | undefined;
  const incoming = new Map<string, { name: string; size: number; sha256: string; parts: Buffer[]; got: number }>();
  const onChannel = (dc: RTCDataChannel): void => {
    dc.onMessage.subscribe((m: Buffer | string) => {
      if (dc.label === 'chat') {
        summary.messages.push(m.toString());
        return;
      }
      if (!dc.label.startsWith('file:')) return;
      if (typeof m === 'string') {
        const meta = JSON.parse(m) as { name: string; size: number; sha256: string };
        incoming.set(dc.label, { ...meta, parts: [], got: 0 });
        return;
      }
      summary.receivedBytes += m.length;
      const f = incoming.get(dc.label);
      if (!f) return;
      f.parts.push(Buffer.from(m));
      f.got += m.length;
      if (f.got >= f.size) {
        const data = Buffer.concat(f.parts);
        const sha = createHash('sha256').update(data).digest('hex');
        const ok = sha === f.sha256 && data.length === f.size;
        summary.receivedFiles.push({ name: f.name, size: data.length, sha256: sha, ok });
        if (recvDir && ok) {
          mkdirSync(recvDir, { recursive: true });
          writeFileSync(join(recvDir, basename(f.name)), data);
        }
        io.stderr.write(`gatehouse endpoint: received ${f.name} (${data.length} bytes, ${ok ? 'sha256 ok' : 'CORRUPT'})\n`);
        incoming.delete(dc.label);
      }
    });
  };
  pc.onDataChannel.subscribe(onChannel);
  pc.onTrack.subscribe((track) => track.onReceiveRtp.subscribe(() => summary.rtpReceived++));

  const sendFile = v['send-file'] as string | undefined;
  const fileData = sendFile ? readFileSync(sendFile) : null;
  const fileDc = fileData ? pc.createDataChannel(`file:${basename(sendFile!)}`) : null;
  const chatDc = v.message !== undefined ? pc.createDataChannel('chat') : null;
  const audioTrack = audioPackets > 0 || audioFile ? new MediaStreamTrack({ kind: 'audio' }) : null;
  if (audioTrack) pc.addTransceiver(audioTrack, { direction: 'sendonly' });
  else if (role === 'offer' && !fileDc && !chatDc) pc.createDataChannel('chat');

  let code = 1;
  try {
    mkdirSync(dir, { recursive: true });
    const offerFile = join(dir, 'offer.json');
    const answerFile = join(dir, 'answer.json');
    if (role === 'offer') {
      await pc.setLocalDescription(await pc.createOffer());
      await gathered(pc);
      writeAtomic(offerFile, JSON.stringify(pc.localDescription));
      const ans = JSON.parse(await waitFile(answerFile, deadline)) as { type: 'answer'; sdp: string };
      await pc.setRemoteDescription(ans);
    } else {
      const off = JSON.parse(await waitFile(offerFile, deadline)) as { type: 'offer'; sdp: string };
      await pc.setRemoteDescription(off);
      if (audioTrack) {
        // An answerer that sends audio needs its own transceiver to be sendrecv.
        for (const t of pc.getTransceivers()) if (t.kind === 'audio') t.setDirection('sendrecv');
      }
      await pc.setLocalDescription(await pc.createAnswer());
      await gathered(pc);
      writeAtomic(answerFile, JSON.stringify(pc.localDescription));
    }
    await new Promise<void>((resolve, reject) => {
      if (pc.connectionState === 'connected') return resolve();
      const timer = setTimeout(() => reject(new Error('call did not connect')), Math.max(0, deadline - systemClock.now()));
      pc.connectionStateChange.subscribe((s) => {
        if (s === 'connected') {
          clearTimeout(timer);
          resolve();
        } else if (s === 'failed') {
          clearTimeout(timer);
          reject(new Error('call failed'));
        }
      });
    });
    summary.connected = true;
    io.stderr.write(`gatehouse endpoint: connected (${role})\n`);
    if (chatDc) {
      await waitOpen(chatDc, deadline);
      chatDc.send(v.message as string);
    }
    if (fileDc && fileData) {
      await waitOpen(fileDc, deadline);
      const sha256 = createHash('sha256').update(fileData).digest('hex');
      fileDc.send(JSON.stringify({ name: basename(sendFile!), size: fileData.length, sha256 }));
      const step = chunkSize === 0 ? Math.max(1, fileData.length) : chunkSize;
      for (let o = 0; o < fileData.length; o += step) {
        fileDc.send(fileData.subarray(o, o + step));
        while (fileDc.bufferedAmount > 1024 * 1024) await sleep(10);
      }
      summary.sentFile = { name: basename(sendFile!), size: fileData.length, sha256 };
    }
    if (audioTrack && audioFile) {
      // Real audio: one Opus packet per RTP packet (RFC 7587 §4.2), the RTP timestamp on
      // the 48 kHz clock advanced by each packet's duration (§4.1), sent at the pace of
      // that clock (drift-corrected); the marker on the first packet (RFC 3550 §5.1).
      // werift sets SSRC and the negotiated payload type and protects with SRTP.
      let ts = 0;
      const t0 = systemClock.now();
      for (let i = 0; i < audioFile.packets.length; i++) {
        const header = new RtpHeader({ sequenceNumber: (i + 1) & 0xffff, timestamp: ts, payloadType: 111, marker: i === 0 });
        audioTrack.writeRtp(new RtpPacket(header, audioFile.packets[i]!));
        summary.rtpSent++;
        ts += audioFile.samples[i]!;
        const wait = t0 + ts / 48 - systemClock.now();
        if (wait > 0) await sleep(wait);
      }
      summary.audioFile = { packets: audioFile.packets.length, durationMs: ts / 48 };
    } else if (audioTrack) {
      // Synthetic audio: 20 ms frames of silence-like payload; werift sets SSRC and PT.
      let seq = 1;
      let ts = 0;
      for (let i = 0; i < audioPackets; i++) {
        const header = new RtpHeader({ sequenceNumber: seq++, timestamp: ts, payloadType: 111, marker: i === 0 });
        ts += 960;
        audioTrack.writeRtp(new RtpPacket(header, Buffer.alloc(60, 0xf8)));
        summary.rtpSent++;
        await sleep(20);
      }
    }
    const holdUntil = Math.min(deadline, systemClock.now() + holdS * 1000);
    while (systemClock.now() < holdUntil) await sleep(50);
    code = 0;
  } catch (e) {
    io.stderr.write(`gatehouse endpoint: ${(e as Error).message}\n`);
    code = 1;
  } finally {
    if (agent) {
      summary.escrow = agent.records.map((r) => ({ ...r }));
      if (pcpServer) {
        summary.pcp = { mappings: agent.pcpMappings.map((m) => ({ ...m })), escrow: agent.pcpRecords.map((r) => ({ ...r })) };
        await agent.closeAndDeleteMappings(); // RFC 6887 §15: delete before exiting
      } else agent.close();
    }
    audioTrack?.stop();
    await pc.close().catch(() => undefined);
  }
  if (v.json) io.stdout.write(JSON.stringify(summary) + '\n');
  return code;
}
