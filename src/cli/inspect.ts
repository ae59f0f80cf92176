/**
 * `gatehouse inspect CAPTURE.pcap --keys KEYS [--rules PATH]` (contract.md "Commands"):
 * runs the inspection engine offline on a capture and writes EVE JSON lines to stdout,
 * a summary to stderr (and a progress bar when stderr is a terminal). `--rules` uses the
 * policy engine (src/policy) and reports every match as an `alert` event.
 */
import { readFileSync, statSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import type { Writable } from 'node:stream';
import { parseArgs } from 'node:util';
import { CaptureError, CaptureInspector, readCapture, type CaptureStats, type CaptureSummary } from '../inspect/capture.js';
import { eveLine, encodeEveLine, alertEve, type FlowMeta } from '../inspect/eve-format.js';
import { policySubject } from '../policy/subject.js';
import type { InspectEvent } from '../inspect/events.js';
import { KeyLog } from '../inspect/keylog.js';
import { KeySetError, keySetsFromJson, type KeySet } from '../wire/keyset.js';
import { StaticKeyProvider, type FlowRecord, type PipelineCounters } from '../inspect/pipeline.js';
import type { FlowContext, PolicyEngine, Subject } from '../policy/engine.js';
import { ConfigError } from '../util/errors.js';
import { systemClock } from '../util/clock.js';

export const INSPECT_HELP = `Usage: gatehouse inspect CAPTURE.pcap --keys KEYS [options]

Runs the inspection engine offline on a capture: DTLS handshakes, decrypted data-channel
messages and files, DTLS application data, SRTP streams and packets. Events go to standard
output as JSON lines (EVE shape); a summary goes to standard error.

Arguments:
  CAPTURE.pcap          a classic libpcap file (Ethernet, Linux cooked SLL/SLL2, raw IP,
                        loopback). pcapng: convert first with
                        \`editcap -F pcap in.pcapng out.pcap\` or \`tshark -F pcap -r in -w out\`
Options:
  --keys KEYS           an NSS key log (CLIENT_RANDOM lines for DTLS 1.2,
                        CLIENT_TRAFFIC_SECRET_0 / SERVER_TRAFFIC_SECRET_0 for DTLS 1.3),
                        or a JSON key-set file (an array of key-escrow.md §3 key sets)
  --rules PATH          evaluate the rules of PATH (a rule file or a folder of *.yaml,
                        contract.md "Rules") on messages, files, application data and
                        media streams, and emit an \`alert\` event per match (the action the
                        gateway would take is in alert.action / gatehouse.rule_action;
                        no TURN user is known offline, so user/group rules never match)
  --hash records        also hash every DTLS application-data record (\`appdata.sha256\`;
                        without it an \`appdata\` event carries its size only, unless
                        --rules is given). Messages and files always carry their SHA-256
  --no-rtp-packets      omit the per-packet \`rtp.packet\` events (streams are still reported)
  --threads N|auto      worker threads, each inspecting its share of the flows (default
                        1; auto: one per core; always one with --rules); the output is
                        the same, byte for byte, whatever the number; with more than one
                        there is no progress bar. Every thread still walks every packet
                        (flow ids and order), so more threads pay only where the work
                        per flow (decryption, hashing, reassembly) outweighs that walk
  --no-progress         no progress bar even when standard error is a terminal
  -h, --help            this text

Exit status: 0 done, 2 usage or input error.
`;

interface Io {
  stdout: Writable;
  stderr: Writable;
}

function usage(io: Io, msg: string): number {
  io.stderr.write(`gatehouse inspect: ${msg}\nRun "gatehouse inspect --help" for usage.\n`);
  return 2;
}

/** Loads KEYS: JSON key sets when the file starts with '[' or '{', else an NSS key log. */
export function loadKeys(path: string): { provider: StaticKeyProvider; kind: 'json' | 'keylog'; count: number } {
  const text = readFileSync(path, 'utf8');
  const head = text.trimStart()[0];
  if (head === '[' || head === '{') {
    let sets: KeySet[];
    try {
      sets = keySetsFromJson(text);
    } catch (e) {
      if (e instanceof KeySetError) throw new ConfigError(path, 1, 1, '', `invalid key-set file: ${e.reason}`);
      throw e;
    }
    return { provider: new StaticKeyProvider(sets), kind: 'json', count: sets.length };
  }
  const log = KeyLog.parse(text);
  if (log.size === 0) {
    throw new ConfigError(
      path,
      1,
      1,
      '',
      `no key lines found (expected an NSS key log or a JSON key-set file${log.rejected ? `; ${log.rejected} malformed line(s)` : ''})`,
    );
  }
  return { provider: new StaticKeyProvider([], log), kind: 'keylog', count: log.size };
}

/** Thrown into the capture reader when stdout went away (e.g. `| head`): stop quietly. */
class OutputClosed extends Error {}

/** Bytes of lines written to stdout at once. */
const LINE_CHUNK = 64 * 1024;

/**
 * Buffers JSON lines and writes them in batches; reports when stdout wants a pause. Each
 * line is encoded (UTF-8) straight into the batch's Buffer, so no joined string is built
 * and converted again per batch; a written batch is the stream's (a new one follows).
 */
export class LineWriter {
  private buf = Buffer.allocUnsafe(LINE_CHUNK);
  private used = 0;
  private blocked = false;
  private dead = false;
  private waiting: Promise<void> | null = null;
  private wake: (() => void) | null = null;
  constructor(private readonly out: Writable) {
    out.on('error', () => {
      this.dead = true;
      this.wake?.();
    });
  }

  line(s: string): void {
    if (this.dead) return;
    // UTF-8 takes at most 3 bytes per UTF-16 code unit; the line and its newline must fit.
    if (this.used + 3 * s.length + 1 > this.buf.length) {
      this.flush();
      if (3 * s.length + 1 > this.buf.length) {
        // A line longer than a batch (a huge alert): written on its own.
        if (!this.out.write(s + '\n')) this.blocked = true;
        return;
      }
    }
    this.used += this.buf.write(s, this.used, 'utf8');
    this.buf[this.used++] = 0x0a;
  }

  /** The event's line, eveLine(e, f); encoded in place where encodeEveLine can. */
  eve(e: InspectEvent, f: FlowMeta): void {
    if (this.dead) return;
    let end = encodeEveLine(e, f, this.buf, this.used);
    if (end === -2) {
      this.flush();
      end = encodeEveLine(e, f, this.buf, 0);
    }
    if (end < 0) return this.line(eveLine(e, f));
    this.buf[end] = 0x0a;
    this.used = end + 1;
  }

  flush(): void {
    if (this.used === 0 || this.dead) return;
    const chunk = this.buf.subarray(0, this.used);
    this.buf = Buffer.allocUnsafe(LINE_CHUNK);
    this.used = 0;
    if (!this.out.write(chunk)) this.blocked = true;
  }

  /** For readCapture: a promise while stdout is over its high-water mark. */
  backpressure = (): Promise<void> | null => {
    this.flush();
    if (this.dead) return Promise.reject(new OutputClosed());
    if (!this.blocked) return null;
    this.waiting ??= new Promise<void>((resolve) => {
      const done = (): void => {
        this.out.off('drain', done);
        this.out.off('close', done);
        this.wake = null;
        this.blocked = false;
        this.waiting = null;
        resolve();
      };
      this.wake = done;
      this.out.on('drain', done);
      this.out.on('close', done);
    });
    return this.waiting;
  };

  async end(): Promise<void> {
    this.flush();
    const w = this.backpressure();
    if (w) await w.catch(() => {});
  }
}

/**
 * Offline, the gateway's client is not known for a flow seen between two relayed
 * addresses; the TURN-wrapped leg names it (turn.client). Elsewhere the DTLS client is
 * taken as the near side, so `c2s` is `to_peer`.
 */
function toPeer(e: InspectEvent, f: FlowMeta): boolean {
  if (f.turn) {
    const clientIsA = f.a.ip === f.turn.client.ip && f.a.port === f.turn.client.port;
    const fromA = (e.dir ?? 'c2s') === 'c2s' ? (f.dtlsClientIsA ?? true) : !(f.dtlsClientIsA ?? true);
    return fromA === clientIsA;
  }
  return (e.dir ?? 'c2s') === 'c2s';
}

function flowContext(f: FlowMeta, e: InspectEvent): FlowContext {
  const near = toPeer(e, f);
  const fromA = (e.dir ?? 'c2s') === 'c2s' ? (f.dtlsClientIsA ?? true) : !(f.dtlsClientIsA ?? true);
  const src = fromA ? f.a : f.b;
  const dst = fromA ? f.b : f.a;
  return { groups: [], peerIp: (near ? dst : src).ip };
}

/** The policy subject of an inspection event, if it has one. */
function subjectOf(e: InspectEvent, f: FlowMeta): Subject | null {
  return policySubject(e, toPeer(e, f) ? 'to_peer' : 'from_peer');
}

export async function runInspect(argv: string[], io: Io): Promise<number> {
  let parsed: ReturnType<
    typeof parseArgs<{
      options: {
        keys: { type: 'string' };
        rules: { type: 'string' };
        hash: { type: 'string' };
        help: { type: 'boolean'; short: 'h' };
        'no-rtp-packets': { type: 'boolean' };
        'no-progress': { type: 'boolean' };
        threads: { type: 'string' };
      };
      allowPositionals: true;
    }>
  >;
  try {
    parsed = parseArgs({
      args: argv,
      options: {
        keys: { type: 'string' },
        rules: { type: 'string' },
        hash: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
        'no-rtp-packets': { type: 'boolean' },
        'no-progress': { type: 'boolean' },
        threads: { type: 'string' },
      },
      allowPositionals: true,
      strict: true,
    });
  } catch (e) {
    return usage(io, (e as Error).message);
  }
  const v = parsed.values;
  if (v.help) {
    io.stdout.write(INSPECT_HELP);
    return 0;
  }
  if (parsed.positionals.length !== 1) {
    return usage(
      io,
      parsed.positionals.length === 0 ? 'missing CAPTURE.pcap' : `expected one capture file, got ${parsed.positionals.length}`,
    );
  }
  const capture = parsed.positionals[0]!;
  if (!v.keys) return usage(io, 'missing --keys KEYS');
  if (v.hash !== undefined && v.hash !== 'records') return usage(io, `--hash: unknown value "${v.hash}" (expected "records")`);
  let threads = 1;
  if (v.threads === 'auto') threads = availableParallelism();
  else if (v.threads !== undefined) {
    threads = /^[0-9]+$/.test(v.threads) ? Number(v.threads) : NaN;
    if (!(threads >= 1 && threads <= 64)) return usage(io, `--threads: expected a number 1..64 or "auto", got "${v.threads}"`);
  }

  let keys: ReturnType<typeof loadKeys>;
  try {
    keys = loadKeys(v.keys);
  } catch (e) {
    if (e instanceof ConfigError) return usage(io, e.message);
    return usage(io, `cannot read keys ${v.keys}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }

  let policy: PolicyEngine | null = null;
  if (v.rules) {
    try {
      // Loaded only for --rules: the rule loader and its YAML parser are most of startup.
      const { loadPolicy } = await import('../policy/loader.js');
      const p = await loadPolicy(v.rules);
      if (p.files.length === 0) return usage(io, `no rule files at ${v.rules}`);
      policy = p.engine;
    } catch (e) {
      if (e instanceof ConfigError) return usage(io, e.message);
      return usage(io, `cannot read rules ${v.rules}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
  }

  let fileSize = 0;
  try {
    fileSize = statSync(capture).size;
  } catch (e) {
    return usage(io, `cannot read capture ${capture}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }

  if (threads > 1 && !policy) {
    const { inspectThreaded } = await import('./inspect-threads.js');
    const r = await inspectThreaded(
      { capture, keysPath: v.keys, hashAppData: v.hash === 'records', rtpPackets: !v['no-rtp-packets'] },
      threads,
      io.stdout,
    );
    if (r.error) return usage(io, r.error);
    io.stderr.write(summaryLines(r, keys, false, 0).join('\n') + '\n');
    return 0;
  }

  const out = new LineWriter(io.stdout);
  const counts = new Map<string, number>();
  /** Of counts, the `appdata` events (most of them), kept apart from the map until the end. */
  let appdata = 0;
  let alerts = 0;
  let lastStamp = '';
  const alerted = new Set<string>();
  const onEvent = (e: InspectEvent, flow: FlowRecord): void => {
    if (e.type === 'appdata') appdata++;
    else counts.set(e.type, (counts.get(e.type) ?? 0) + 1);
    out.eve(e, flow.meta);
    if (!policy) return;
    const subject = subjectOf(e, flow.meta);
    if (!subject) return;
    const verdict = policy.evaluate(flowContext(flow.meta, e), subject);
    // A file is also a data-channel message (same bytes, same time): a rule matching
    // both is reported once.
    const stamp = `${flow.meta.flowId}|${e.time}|${subject.sha256 ?? ''}|${e.type === 'file' || e.type === 'datachannel.message' ? 'msg' : e.type}`;
    if (stamp !== lastStamp) {
      lastStamp = stamp;
      alerted.clear();
    }
    for (const m of verdict.matches) {
      if (alerted.has(m.rule.id)) continue;
      alerted.add(m.rule.id);
      alerts++;
      const a = alertEve(
        e.time,
        flow.meta,
        e.dir,
        e.association,
        {
          action: m.action === 'block' || m.action === 'drop' ? 'blocked' : 'allowed',
          signature_id: m.rule.id,
          signature: m.rule.description ?? `gatehouse rule ${m.rule.id} (${m.action})`,
          severity: m.rule.severity,
        },
        { rule_action: m.action, matched_event: e.type, ...('sha256' in e ? { sha256: e.sha256 } : {}) },
      );
      out.line(JSON.stringify(a));
    }
  };

  const inspector = new CaptureInspector({
    keys: keys.provider,
    onEvent,
    rtpPackets: !v['no-rtp-packets'],
    // A rule may match an application-data record by its sha256 (contract.md "Rules").
    hashAppData: v.hash === 'records' || policy !== null,
    // onEvent writes each event's line and judges it before it returns: it keeps no plaintext.
    borrowedPlaintext: true,
  });

  const tty = !v['no-progress'] && (io.stderr as Writable & { isTTY?: boolean }).isTTY === true;
  let lastDraw = 0;
  let readBytes = 24;
  const progress = (): void => {
    const now = systemClock.now();
    if (now - lastDraw < 200) return;
    lastDraw = now;
    const pct = fileSize > 0 ? Math.min(100, Math.floor((readBytes / fileSize) * 100)) : 0;
    const width = 30;
    const fill = Math.round((pct / 100) * width);
    io.stderr.write(
      `\r[${'#'.repeat(fill)}${'.'.repeat(width - fill)}] ${pct}% ${inspector.stats.packets} packets, ${inspector.flows.stats.created} flows`,
    );
  };

  let summary;
  try {
    summary = await readCapture(
      capture,
      (p) => {
        inspector.packet(p);
        readBytes += 16 + p.data.length;
        if (tty) progress();
      },
      // CaptureInspector copies what it keeps of a record (ReadCaptureOptions.reuseChunks).
      { backpressure: out.backpressure, reuseChunks: true },
    );
  } catch (e) {
    if (tty) io.stderr.write('\n');
    if (e instanceof CaptureError) return usage(io, e.message);
    if (!(e instanceof OutputClosed)) throw e;
    summary = { linktype: -1, packets: inspector.stats.packets, bytes: inspector.stats.bytes, truncated: false };
  }
  inspector.finish();
  await out.end();
  if (tty) io.stderr.write(`\r${' '.repeat(79)}\r`);

  const r: ShareResult = {
    summary,
    stats: inspector.stats,
    totals: inspector.totals,
    flowsCreated: inspector.flows.stats.created,
    counts: Object.fromEntries(appdata > 0 ? [...counts, ['appdata', appdata]] : counts),
  };
  io.stderr.write(summaryLines(r, keys, policy !== null, alerts).join('\n') + '\n');
  return 0;
}

/** What one inspection (or one worker's share of it) found, for the summary. */
export interface ShareResult {
  summary: CaptureSummary;
  stats: CaptureStats;
  totals: PipelineCounters;
  flowsCreated: number;
  /** Events by type. */
  counts: Record<string, number>;
}

/** The summary written to standard error. */
export function summaryLines(r: ShareResult, keys: { count: number; kind: 'json' | 'keylog' }, rules: boolean, alerts: number): string[] {
  const { summary, stats: s, totals: tot } = r;
  // Event types are ASCII: ordered by code unit (what localeCompare gave them, without
  // loading ICU's collator, a few milliseconds of a one-second run).
  const ev = Object.entries(r.counts).sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  const lines = [
    `gatehouse inspect: ${summary.packets} packets (${s.udp} UDP, ${s.tcp} TCP), ${r.flowsCreated} flows, keys: ${keys.count} ${keys.kind === 'json' ? 'key set(s)' : 'key log entries'}`,
    `  events: ${ev.length ? ev.map(([k, n]) => `${k}=${n}`).join(' ') : 'none'}${rules ? `, alerts=${alerts}` : ''}`,
    `  demux: stun=${tot.stun} dtls=${tot.dtls} rtp=${tot.rtp} rtcp=${tot.rtcp} dropped=${tot.dropped + tot.zrtp + tot.channeldata}; appdata=${tot.appdata} sctp=${tot.sctp}`,
    `  undecryptable: dtls=${tot.undecryptableDtls} srtp=${tot.undecryptableSrtp}`,
    `  turn: data=${s.turnData} control=${s.turnControl} unbound_channel=${s.turnUnbound}; ip fragments=${s.ipFragments} reassembled=${s.ipReassembled}; malformed=${s.malformed} non_ip=${s.notIp + s.unsupportedLink} other_proto=${s.otherProto} tcp_not_turn=${s.tcpNotTurn}`,
  ];
  if (tot.internalErrors > 0) lines.push(`  internal errors (dropped packets): ${tot.internalErrors}`);
  if (summary.truncated) lines.push('  warning: the capture ends in the middle of a record (truncated file)');
  if (summary.linktype >= 0 && s.unsupportedLink > 0) lines.push(`  warning: link type ${summary.linktype} is not supported`);
  return lines;
}
