// Gatehouse dashboard (issue 14). Plain script under a strict CSP: no inline code, text
// only through textContent, state-changing requests carry the session's CSRF token.
'use strict';

const csrf = document.querySelector('meta[name="csrf-token"]').getAttribute('content');
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') e.className = v;
    else if (k.startsWith('data-')) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c == null ? '' : String(c)));
  return e;
}

async function api(path, opts = {}) {
  const headers = { accept: 'application/json', ...(opts.method && opts.method !== 'GET' ? { 'x-csrf-token': csrf } : {}) };
  const res = await fetch(path, { credentials: 'same-origin', ...opts, headers });
  if (res.status === 401) {
    location.reload(); // the session ended: back to the login form
    throw new Error('login required');
  }
  const body = await res.json();
  return { status: res.status, body };
}

function bytes(n) {
  if (typeof n !== 'number') return '–';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) {
    n /= 1024;
    i++;
  }
  return `${i ? n.toFixed(1) : n} ${u[i]}`;
}

// ------------------------------------------------------------------ flows

function keyCell(f) {
  const td = el('td', { class: `keys keys-${f.key_status || 'none'}` });
  td.append(el('span', { class: 'key-status' }, f.key_status || '–'));
  if (f.key_status === 'waiting' && f.key_deadline) {
    td.append(' ', el('span', { class: 'deadline', 'data-deadline': String(Date.parse(f.key_deadline)) }, ''));
  }
  if (f.key_reason) td.append(' ', el('span', { class: 'reason' }, `(${f.key_reason})`));
  return td;
}

function tickDeadlines() {
  const now = Date.now();
  for (const d of document.querySelectorAll('[data-deadline]')) {
    const left = Math.max(0, Number(d.getAttribute('data-deadline')) - now);
    d.textContent = `${(left / 1000).toFixed(1)} s left`;
    d.classList.toggle('late', left === 0);
  }
}

async function loadFlows() {
  const { body } = await api('/ui/flows');
  const tb = $('flows').tBodies[0];
  tb.replaceChildren(
    ...body.map((f) =>
      el(
        'tr',
        {
          class: `verdict-${f.verdict || 'forward'}`,
          'data-flow': f.worker === undefined ? String(f.flow_id) : `${f.worker}:${f.flow_id}`,
        },
        // With relay workers (turn.workers) flow ids are per worker: the worker is named too.
        el('td', {}, f.flow_id, f.path === 'pcp' ? ' (pcp)' : '', f.worker === undefined ? '' : ` · w${f.worker}`),
        el('td', {}, f.user, f.guest ? ' (guest)' : ''),
        el('td', {}, (f.groups || []).join(', ')),
        el('td', {}, [f.conference, f.room].filter(Boolean).join(' / ') || '–'),
        el('td', {}, f.peer),
        keyCell(f),
        el('td', { class: 'num' }, bytes(f.bytes)),
        el('td', {}, f.verdict || '–', f.alerts ? ` (${f.alerts} alerts)` : ''),
      ),
    ),
  );
  $('flow-count').textContent = String(body.length);
  $('no-flows').hidden = body.length > 0;
  tickDeadlines();
}

// ------------------------------------------------------------------ events

const MAX_EVENTS = 200;

function describe(e) {
  const g = e.gatehouse || {};
  const a = e.alert || {};
  const q = e.quota || {};
  switch (e.event_type) {
    case 'alert':
      return `${a.action === 'blocked' ? 'BLOCKED' : 'alert'} ${a.signature_id}: ${a.signature}`;
    case 'flow_blocked':
      return `flow blocked (${g.reason}${g.budget ? `: ${g.budget}` : ''})`;
    case 'quota':
      return `quota ${q.id} crossed by ${q.subject}: ${bytes(q.used)} of ${bytes(q.limit)}`;
    case 'flow_uninspected':
      return `flow relayed uninspected (${g.reason})`;
    case 'keys_invalid':
      return `keys invalid${g.reason ? ` (${g.reason})` : ''}`;
    case 'keys_verified':
      return 'keys verified';
    default:
      return e.event_type;
  }
}

function addEvent(e, top) {
  const g = e.gatehouse || {};
  const li = el(
    'li',
    { class: `ev ev-${e.event_type}${e.alert && e.alert.action === 'blocked' ? ' ev-blocked' : ''}` },
    el('time', {}, (e.timestamp || '').slice(11, 19)),
    ' ',
    el('strong', {}, describe(e)),
    ' ',
    el('span', { class: 'who' }, [g.user, e.flow_id !== undefined ? `flow ${e.flow_id}` : '', e.dest_ip].filter(Boolean).join(' · ')),
  );
  const list = $('events');
  if (top) list.prepend(li);
  else list.append(li);
  while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
  $('event-count').textContent = String(list.children.length);
  $('no-events').hidden = true;
}

async function loadEvents() {
  const { body } = await api('/ui/events');
  $('events').replaceChildren();
  for (let i = body.length - 1; i >= 0; i--) addEvent(body[i], false);
  $('no-events').hidden = body.length > 0;
}

function connectStream() {
  const es = new EventSource('/ui/events/stream');
  const live = $('live');
  es.onopen = () => {
    live.textContent = 'live';
    live.className = 'badge ok';
  };
  es.onerror = () => {
    live.textContent = 'reconnecting…';
    live.className = 'badge warn';
  };
  for (const type of ['alert', 'flow_blocked', 'quota', 'flow_uninspected', 'keys_invalid', 'keys_verified']) {
    es.addEventListener(type, (m) => {
      try {
        addEvent(JSON.parse(m.data), true);
      } catch (err) {
        console.warn('event not shown', err);
      }
      loadFlows().catch(() => {});
      if (type === 'quota') loadQuotas().catch(() => {});
    });
  }
}

// ------------------------------------------------------------------ recordings

const shown = new Map(); // id -> verify element

function verifyText(v) {
  return v.ok ? 'verified ✓' : `verify FAILED: ${v.problems.join('; ')}`;
}

async function loadRecordings() {
  const { body } = await api('/ui/recordings');
  $('recordings-status').textContent =
    (body.ok ? 'gatehouse verify: all seals good.' : `gatehouse verify: ${body.problems.join('; ') || 'problems below'}`) +
    (body.unsealed.length ? ` ${body.unsealed.length} still recording.` : '');
  $('recordings-status').className = body.ok ? 'ok' : 'bad';
  const list = $('recordings');
  for (const r of [...body.recordings].reverse()) {
    let v = shown.get(r.id);
    if (!v) {
      v = el('span', { class: 'verify' });
      const li = el(
        'li',
        { 'data-recording': r.id },
        el(
          'div',
          { class: 'rec-head' },
          el('strong', {}, r.user || '?'),
          ` flow ${r.flow ?? '?'} · ${(r.started || '').slice(0, 19).replace('T', ' ')} · ${bytes(r.bytes)} `,
          v,
        ),
      );
      if (r.incomplete) li.append(el('div', { class: 'bad' }, `incomplete: ${r.incomplete}`));
      for (const m of r.media) {
        const src = `/ui/recordings/${encodeURIComponent(r.id)}/${encodeURIComponent(m.file)}`;
        const media = el(m.type.startsWith('video/') ? 'video' : 'audio', { controls: true, preload: 'metadata', src });
        media.setAttribute('data-file', m.file);
        li.append(el('div', { class: 'media' }, el('span', { class: 'file' }, m.file), media));
      }
      if (!r.media.length) li.append(el('div', { class: 'empty' }, 'no playable media (pcap only)'));
      list.prepend(li);
      shown.set(r.id, v);
    }
    v.textContent = verifyText(r.verify);
    v.className = `verify ${r.verify.ok ? 'ok' : 'bad'}`;
  }
  $('no-recordings').hidden = body.recordings.length > 0;
}

// ------------------------------------------------------------------ quotas and rules

async function loadQuotas() {
  const { body } = await api('/ui/quotas');
  $('quotas').tBodies[0].replaceChildren(
    ...body.map((q) => {
      const pct = q.limit > 0 ? Math.min(100, (100 * q.used) / q.limit) : 0;
      const bar = el('progress', { max: 100, value: pct });
      return el(
        'tr',
        { class: q.used >= q.limit ? 'over' : '' },
        el('td', {}, q.quota),
        el('td', {}, q.subject),
        el('td', {}, `${q.period} ${q.window}`),
        el('td', {}, bar, ` ${bytes(q.used)} / ${bytes(q.limit)}`),
      );
    }),
  );
  $('no-quotas').hidden = body.length > 0;
}

async function loadRules() {
  const { body } = await api('/ui/policy');
  if (!body) return;
  const k = body.keys;
  $('keys-policy').textContent = k
    ? `Keys: ${k.required ? 'required' : 'optional'}, deadline ${k.deadline / 1000} s, unverified ${k.unverified}.`
    : 'Keys: no keys section (keys welcome, not required).';
  $('rules').replaceChildren(
    ...body.rules.map((r) =>
      el(
        'li',
        { class: `rule act-${r.action}` },
        el('strong', {}, r.id),
        ` → ${r.action} (severity ${r.severity}) `,
        el('code', {}, JSON.stringify(r.when)),
        r.description ? el('div', { class: 'desc' }, r.description) : '',
      ),
    ),
  );
  $('rule-count').textContent = String(body.rules.length);
}

async function reload() {
  const out = $('reload-result');
  out.hidden = false;
  out.textContent = 'reloading…';
  const { status, body } = await api('/ui/policy/reload', { method: 'POST' });
  out.textContent = body.message || body.error || `HTTP ${status}`;
  out.className = body.ok ? 'ok' : 'bad';
  await loadRules();
}

async function logout() {
  await api('/logout', { method: 'POST' });
  location.href = '/';
}

// ------------------------------------------------------------------ health

// /healthz names what cannot do its work now (a full disk, the cluster's Redis away).
async function loadHealth() {
  const res = await fetch('/healthz', { credentials: 'same-origin' });
  const body = await res.json();
  const h = $('health');
  h.hidden = body.status === 'ok';
  h.textContent = body.status === 'ok' ? '' : `degraded: ${(body.degraded || []).join(', ')}`;
}

// ------------------------------------------------------------------ start

function every(ms, fn) {
  const run = () => fn().catch(() => {});
  run();
  setInterval(run, ms);
}

$('reload').addEventListener('click', () => reload().catch((e) => ($('reload-result').textContent = String(e))));
$('logout').addEventListener('click', () => logout().catch(() => {}));
loadEvents()
  .catch(() => {})
  .then(connectStream);
every(2000, loadFlows);
every(5000, loadRecordings);
every(5000, loadQuotas);
every(15000, loadRules);
every(5000, loadHealth);
setInterval(tickDeadlines, 250);
