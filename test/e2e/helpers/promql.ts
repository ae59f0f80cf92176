// The metric names a PromQL expression reads (for the deploy/ checks: every name in
// deploy/prometheus/alerts.yml and deploy/grafana/gatehouse.json must be one /metrics
// exports). Not a PromQL parser: string literals, label matchers `{...}`, ranges
// `[...]`, grouping lists `by (...)` / `without (...)` / `on (...)` / `ignoring (...)` /
// `group_left (...)` / `group_right (...)` and Grafana variables ($x, ${x}) are removed,
// then every identifier that is not a function call, a keyword or a number is a metric name.

const KEYWORDS = new Set([
  'and',
  'or',
  'unless',
  'bool',
  'offset',
  'by',
  'without',
  'on',
  'ignoring',
  'group_left',
  'group_right',
  'inf',
  'nan',
]);

export function metricNames(expr: string): string[] {
  let s = expr.replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, '""').replace(/\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*/g, ' ');
  // Innermost first, until nothing changes: label matchers and ranges hold no metric names.
  for (let prev = ''; prev !== s;) {
    prev = s;
    s = s.replace(/\{[^{}]*\}/g, ' ').replace(/\[[^[\]]*\]/g, ' ');
  }
  s = s.replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)/g, ' ');
  const names = new Set<string>();
  for (const m of s.matchAll(/[A-Za-z_:][A-Za-z0-9_:]*/g)) {
    const word = m[0];
    const after = s.slice(m.index! + word.length);
    if (/^\s*\(/.test(after)) continue; // a function: rate(, sum(, histogram_quantile(
    if (KEYWORDS.has(word.toLowerCase())) continue;
    const before = s.slice(0, m.index!);
    if (/[0-9.]$/.test(before) || /^[eE]$/.test(word)) continue; // 1e3, 0.5
    names.add(word);
  }
  return [...names];
}

/**
 * The sample names a Prometheus text exposition defines, from its # TYPE lines (families
 * with no sample yet, e.g. a labelled counter never incremented, count too): histograms
 * and summaries also as name_bucket / name_sum / name_count.
 */
export function exportedNames(exposition: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const m of exposition.matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
    const [, name, type] = m as unknown as [string, string, string];
    out.set(name, type);
    if (type === 'histogram' || type === 'summary') for (const suffix of ['_bucket', '_sum', '_count']) out.set(name + suffix, type);
  }
  return out;
}
