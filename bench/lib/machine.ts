/** What the figures were measured on. */
import { readFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import os from 'node:os';

export interface MachineInfo {
  cpu: string;
  cores: number;
  node: string;
  kernel: string;
  coturn: string | null;
  loadavg: number[];
  memGiB: number;
}

export function coturnVersion(): string | null {
  const r = spawnSync('turnserver', ['--version'], { encoding: 'utf8', timeout: 10000 });
  if (r.error || r.status !== 0) return null;
  return (r.stdout || r.stderr).trim().split('\n')[0] ?? null;
}

export function machineInfo(): MachineInfo {
  let cpu = os.cpus()[0]?.model ?? 'unknown';
  try {
    const m = /^model name\s*:\s*(.+)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'));
    if (m) cpu = m[1]!.trim();
  } catch {
    /* keep os.cpus() */
  }
  return {
    cpu,
    cores: os.availableParallelism?.() ?? os.cpus().length,
    node: process.version,
    kernel: `${os.type()} ${os.release()}`,
    coturn: coturnVersion(),
    loadavg: os.loadavg().map((l) => Math.round(l * 100) / 100),
    memGiB: Math.round(os.totalmem() / 2 ** 30),
  };
}
