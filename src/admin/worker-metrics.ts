/**
 * /metrics with relay workers (issue 13, turn.workers > 1): every worker has its own
 * prom-client registry; worker 0, which serves the admin listener, answers /metrics with
 * all of them aggregated the way prom-client's cluster mode does (AggregatorRegistry:
 * counters and gauges summed over the workers, the default process metrics by their own
 * aggregators), so the series, names and labels are those of one gateway (README
 * "Metrics") and a Grafana board or an alert rule reads them unchanged. The restart
 * counter is the supervisor's: a worker cannot count its own restarts.
 */
import { AggregatorRegistry, type MetricObjectWithValues, type MetricValue } from 'prom-client';
import { WORKER_RESTARTS_METRIC } from './metrics.js';

/** One worker's registry as getMetricsAsJSON() gives it (what crosses the IPC channel). */
export type WorkerMetricsPart = MetricObjectWithValues<MetricValue<string>>[];

/** The exposition text of every worker's part summed, with the supervisor's restart count. */
export async function aggregateWorkerMetrics(parts: WorkerMetricsPart[], restarts: number): Promise<string> {
  const adjusted = parts.map((part, i) =>
    part.map((m) => (m.name === WORKER_RESTARTS_METRIC ? { ...m, values: [{ value: i === 0 ? restarts : 0, labels: {} }] } : m)),
  );
  return AggregatorRegistry.aggregate(adjusted).metrics();
}
