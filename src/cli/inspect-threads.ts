/**
 * `gatehouse inspect --threads N` (N > 1): N worker threads (src/cli/inspect-worker.ts)
 * each inspect the flows they own; this thread merges their runs of EVE lines by flow-table
 * slot (FlowShard in src/inspect/pipeline.ts) and streams them to stdout as soon as no
 * other worker can still produce an earlier line, so the output is byte for byte the
 * single-threaded one, and memory holds only what one worker is ahead of the others:
 * at most MAX_AHEAD characters per worker (it waits beyond that).
 */
import type { Writable } from 'node:stream';
import { Worker } from 'node:worker_threads';
import type { ShareResult } from './inspect.js';
import type { WorkerJob, WorkerMessage } from './inspect-worker.js';
import { newCounters } from '../inspect/pipeline.js';

interface Lane {
  slots: number[];
  texts: string[];
  head: number;
  watermark: number;
  done: boolean;
  result?: ShareResult;
}

/** Starts the worker module; from the sources (tsx), through tsx's loader. */
function startWorker(job: WorkerJob): Worker {
  const self = import.meta.url;
  if (self.endsWith('.ts')) {
    const tsx = import.meta.resolve('tsx/esm/api');
    const url = new URL('./inspect-worker.ts', self).href;
    const boot = `import(${JSON.stringify(tsx)}).then((m) => { m.register(); return import(${JSON.stringify(url)}); })`;
    return new Worker(boot, { eval: true, workerData: job });
  }
  return new Worker(new URL('./inspect-worker.js', self), { workerData: job });
}

export async function inspectThreaded(
  job: Omit<WorkerJob, 'index' | 'count' | 'ahead'>,
  threads: number,
  stdout: Writable,
): Promise<ShareResult & { error?: string }> {
  const lanes: Lane[] = [];
  const workers: Worker[] = [];
  let out: string[] = [];
  let outBytes = 0;
  let dead = false;
  stdout.on('error', () => {
    dead = true;
  });
  const write = (text: string): void => {
    if (dead) return;
    out.push(text);
    outBytes += text.length;
    if (outBytes >= 1 << 20) flush();
  };
  const flush = (): void => {
    if (out.length === 0 || dead) return;
    stdout.write(out.length === 1 ? out[0]! : out.join(''));
    out = [];
    outBytes = 0;
  };
  /** Writes every run no other worker can still precede. */
  const drain = (): void => {
    for (;;) {
      let best = -1;
      for (let i = 0; i < lanes.length; i++) {
        const l = lanes[i]!;
        if (l.head < l.slots.length && (best < 0 || l.slots[l.head]! < lanes[best]!.slots[lanes[best]!.head]!)) best = i;
      }
      if (best < 0) return;
      const b = lanes[best]!;
      const slot = b.slots[b.head]!;
      for (let i = 0; i < lanes.length; i++) {
        const l = lanes[i]!;
        if (i !== best && l.head >= l.slots.length && !l.done && l.watermark < slot) return;
      }
      const text = b.texts[b.head]!;
      write(text);
      Atomics.sub(ahead, best, text.length);
      Atomics.notify(ahead, best);
      b.texts[b.head] = '';
      b.head++;
      if (b.head === b.slots.length) {
        b.slots = [];
        b.texts = [];
        b.head = 0;
      }
    }
  };
  // Per worker: characters posted and not yet written (WorkerJob.ahead, MAX_AHEAD).
  const ahead = new Int32Array(new SharedArrayBuffer(4 * threads));
  let error: string | undefined;
  await new Promise<void>((resolve) => {
    let pending = threads;
    const finishOne = (): void => {
      if (--pending === 0) resolve();
    };
    for (let i = 0; i < threads; i++) {
      const lane: Lane = { slots: [], texts: [], head: 0, watermark: 0, done: false };
      lanes.push(lane);
      const w = startWorker({ ...job, index: i, count: threads, ahead: ahead.buffer as SharedArrayBuffer });
      workers.push(w);
      let ended = false;
      const end = (): void => {
        if (ended) return;
        ended = true;
        lane.done = true;
        drain();
        finishOne();
      };
      w.on('message', (m: WorkerMessage) => {
        if (m.kind === 'runs') {
          if (lane.head === lane.slots.length) {
            lane.slots = m.slots;
            lane.texts = m.texts;
            lane.head = 0;
          } else {
            lane.slots.push(...m.slots);
            lane.texts.push(...m.texts);
          }
          lane.watermark = m.watermark;
          drain();
        } else if (m.kind === 'done') {
          lane.result = m.result;
          end();
        } else {
          error ??= m.message;
          end();
        }
      });
      w.on('error', (e) => {
        error ??= e.message;
        end();
      });
      w.on('exit', end);
    }
  });
  drain();
  flush();
  await Promise.all(workers.map((w) => w.terminate()));
  if (!dead) await new Promise<void>((resolve) => (stdout.write('') ? resolve() : stdout.once('drain', resolve)));
  const first = lanes[0]!.result;
  if (error || !first) {
    return {
      error: error ?? 'a worker thread stopped without a result',
      summary: { linktype: -1, packets: 0, bytes: 0, truncated: false },
      stats: first?.stats ?? ({} as ShareResult['stats']),
      totals: newCounters(),
      flowsCreated: 0,
      counts: {},
    };
  }
  // Capture-level figures are the same in every worker; pipeline counters and events add up.
  const totals = newCounters() as unknown as Record<string, number>;
  const counts: Record<string, number> = {};
  for (const l of lanes) {
    const r = l.result!;
    const t = r.totals as unknown as Record<string, number>;
    for (const k of Object.keys(totals)) totals[k]! += t[k] ?? 0;
    for (const [k, n] of Object.entries(r.counts)) counts[k] = (counts[k] ?? 0) + n;
  }
  return {
    summary: first.summary,
    stats: first.stats,
    totals: totals as unknown as ShareResult['totals'],
    flowsCreated: first.flowsCreated,
    counts,
  };
}
