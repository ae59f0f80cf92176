/** Shared types of the real-browser harness (harness.ts ⇄ ns-runner.ts). */
import type { DtlsVersion } from './prefs.js';

export interface TurnSpec {
  /**
   * TURN server command line. Placeholders: {ip} {port} {minPort} {maxPort} {user} {pass}
   * {realm} {outDir} {workDir} {logFile}. It must answer STUN Binding on 127.0.0.1:{port}/udp
   * and relay on 127.0.0.1 within {minPort}-{maxPort}, allowing loopback peers.
   */
  argv: string[];
  username: string;
  password: string;
  realm: string;
  /** Fixed ports; 0/undefined = pick. */
  port?: number;
  minPort?: number;
  maxPort?: number;
  env?: Record<string, string>;
}

export interface RunnerConfig {
  outDir: string;
  workDir: string;
  dtls: DtlsVersion;
  netns: boolean;
  turn: TurnSpec;
  firefoxBin: string;
  capture: boolean;
  media: boolean;
  mediaSeconds: number;
  bulkSize: number;
  timeoutMs: number;
  lingerMs: number;
  keepProfile: boolean;
  /** 'none': one Firefox page calls itself; 'chromium': Firefox (pc1, offerer) calls Chromium (pc2). */
  peer: 'none' | 'chromium';
  chromiumBin: string;
}

/** run.json written by the runner. */
export interface RunInfo {
  dtls: DtlsVersion;
  netns: boolean;
  startedAt: string;
  finishedAt?: string;
  files: { pcap: string; keylog: string; report: string; pageLog: string; turnLog: string; firefoxLog: string };
  turn: { host: string; port: number; minPort: number; maxPort: number; argv: string[] };
  firefoxVersion: string;
  chromiumVersion?: string;
  ok: boolean;
  errors: string[];
  pcapBytes?: number;
  keylogLines?: number;
}

/** One message in the page report (sizes and SHA-256 of the exact bytes sent/received). */
export interface MessageRecord {
  from?: 'pc1' | 'pc2';
  to?: 'pc1' | 'pc2';
  label: string;
  index: number;
  kind: 'string' | 'binary';
  size: number;
  sha256: string;
}

export interface PageReport {
  ok: boolean;
  /** 'single-page' (Firefox calls itself) or 'firefox-chromium' (pc1 Firefox, pc2 Chromium). */
  mode?: string;
  peers?: Record<string, { userAgent?: string; ok?: boolean }>;
  userAgent?: string;
  media?: boolean;
  /** Which page-side peer was the DTLS client (RFC 5763 §5, from the answer's a=setup). */
  dtlsClient?: 'pc1' | 'pc2';
  sent: MessageRecord[];
  received: MessageRecord[];
  missing?: MessageRecord[];
  errors: string[];
  stats?: Record<string, Record<string, unknown>[]>;
  sdp?: { offer: string; answer: string };
  log?: string[];
}
