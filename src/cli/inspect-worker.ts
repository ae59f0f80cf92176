/**
 * One worker thread of `gatehouse inspect --threads N` (src/cli/inspect-threads.ts): reads
 * the whole capture, keeps the whole flow table, and runs the inspection pipelines of the
 * flows it owns (flow id mod N). Its EVE lines go to the main thread in runs: a run is the
 * lines of consecutive flow-table slots this worker owns (FlowShard), tagged with its
 * first slot, so the main thread can merge the workers' runs into the single-threaded order.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { CaptureError, CaptureInspector, readCapture } from '../inspect/capture.js';
import { eveLine } from '../inspect/eve-format.js';
import { loadKeys, type ShareResult } from './inspect.js';

export interface WorkerJob {
  capture: string;
  keysPath: string;
  hashAppData: boolean;
  rtpPackets: boolean;
  index: number;
  count: number;
  /**
   * Int32 per worker: characters of lines posted and not yet written by the main thread.
   * A worker that is more than MAX_AHEAD ahead waits (Atomics.wait) until the main thread
   * has written some, so what the merge holds is bounded.
   */
  ahead: SharedArrayBuffer;
}

/** Characters of posted lines a worker may have waiting in the main thread. */
export const MAX_AHEAD = 32 << 20;

/** Worker → main messages. `watermark`: every later run of this worker starts after it. */
export type WorkerMessage =
  | { kind: 'runs'; slots: number[]; texts: string[]; watermark: number }
  | { kind: 'done'; result: ShareResult }
  | { kind: 'error'; message: string; capture: boolean };

/** Bytes of lines a worker collects before posting them. */
const POST_BYTES = 256 * 1024;

async function run(job: WorkerJob): Promise<void> {
  const port = parentPort!;
  const keys = loadKeys(job.keysPath);
  const counts: Record<string, number> = {};
  let slots: number[] = [];
  let texts: string[] = [];
  let cur: string[] = [];
  let curSlot = 0;
  let lastSlot = 0;
  let bytes = 0;
  const closeRun = (): void => {
    if (cur.length > 0) {
      slots.push(curSlot);
      texts.push(cur.join('\n') + '\n');
      cur = [];
    }
    curSlot = 0;
  };
  const ahead = new Int32Array(job.ahead);
  const post = (): void => {
    let chars = 0;
    for (const x of texts) chars += x.length;
    Atomics.add(ahead, job.index, chars);
    port.postMessage({ kind: 'runs', slots, texts, watermark: curSlot > 0 ? curSlot - 1 : lastSlot } satisfies WorkerMessage);
    slots = [];
    texts = [];
    bytes = 0;
  };
  const inspector = new CaptureInspector({
    keys: keys.provider,
    rtpPackets: job.rtpPackets,
    hashAppData: job.hashAppData,
    // Each event becomes its line before onEvent returns: no plaintext is kept.
    borrowedPlaintext: true,
    shard: {
      owns: (id) => id % job.count === job.index,
      onSlot: (slot, _id, owned) => {
        lastSlot = slot;
        if (!owned) closeRun();
        else if (curSlot === 0) curSlot = slot;
      },
    },
    onEvent: (e, flow) => {
      counts[e.type] = (counts[e.type] ?? 0) + 1;
      const line = eveLine(e, flow.meta);
      if (curSlot === 0) curSlot = lastSlot;
      cur.push(line);
      bytes += line.length;
      if (bytes >= POST_BYTES) {
        // A long run is posted in pieces: the next piece starts at the same slot, after this one.
        const s = curSlot;
        closeRun();
        curSlot = s;
        post();
      }
    },
  });
  const summary = await readCapture(job.capture, (p) => inspector.packet(p), {
    // CaptureInspector copies what it keeps of a record (ReadCaptureOptions.reuseChunks).
    reuseChunks: true,
    backpressure: () => {
      if (bytes >= POST_BYTES / 4) post();
      // Far ahead of the other workers: wait for the main thread to write (bounded merge).
      for (let n = Atomics.load(ahead, job.index); n > MAX_AHEAD; n = Atomics.load(ahead, job.index))
        Atomics.wait(ahead, job.index, n, 1000);
      return null;
    },
  });
  inspector.finish();
  closeRun();
  post();
  const result: ShareResult = {
    summary,
    stats: inspector.stats,
    totals: inspector.totals,
    flowsCreated: inspector.flows.stats.created,
    counts,
  };
  port.postMessage({ kind: 'done', result } satisfies WorkerMessage);
}

if (parentPort && workerData) {
  run(workerData as WorkerJob).catch((e: unknown) => {
    parentPort!.postMessage({
      kind: 'error',
      message: (e as Error).message ?? String(e),
      capture: e instanceof CaptureError,
    } satisfies WorkerMessage);
  });
}
