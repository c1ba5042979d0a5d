// hyperhive dashboard: renders /api/state, runs async forms, tails /messages/stream (SSE).
// Vanilla JS, no build step. Sections re-render only when their slice of the state changed,
// and keep open <details>, typed text, focus and scroll positions across re-renders (keys:
// data-key, data-scroll-key). Per-agent describe / logs / config blocks load lazily when opened
// and are re-filled from a cache when the agents table is redrawn.
'use strict';

const REFRESH_MS = 5000;
const FLOW_MAX = 600;
const OPERATOR = 'operator';
const MANAGER = 'manager';

const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => (
  { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
const plural = (n, word, many = `${word}s`) => `${n} ${n === 1 ? word : many}`;

let state = null;
const rendered = {};

// ------------------------------------------------------------------ time

function fmtTime(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  return isNaN(d) ? '' : d.toLocaleTimeString([], { hour12: false });
}

function fmtDuration(sec) {
  sec = Math.max(0, Math.round(sec));
  if (sec < 60) return `${sec}s`;
  if (sec < 3600) return `${Math.floor(sec / 60)}m ${sec % 60}s`;
  if (sec < 86400) return `${Math.floor(sec / 3600)}h ${Math.floor((sec % 3600) / 60)}m`;
  return `${Math.floor(sec / 86400)}d ${Math.floor((sec % 86400) / 3600)}h`;
}

function ago(iso) {
  if (!iso) return '';
  const t = Date.parse(iso);
  if (isNaN(t)) return '';
  const s = (Date.now() - t) / 1000;
  return s < 5 ? 'just now' : `${fmtDuration(s).split(' ')[0]} ago`;
}

function tickClocks() {
  document.querySelectorAll('[data-deadline]').forEach((el) => {
    const left = (Date.parse(el.dataset.deadline) - Date.now()) / 1000;
    el.textContent = left > 0 ? `ttl ${fmtDuration(left)}` : 'expiring';
    el.classList.toggle('late', left < 60);
  });
  document.querySelectorAll('[data-ago]').forEach((el) => { el.textContent = ago(el.dataset.ago); });
}

// ------------------------------------------------------------------ render helpers

function who(name) {
  const cls = name === OPERATOR ? 'who-operator' : name === MANAGER ? 'who-manager' : '';
  let style = '';
  if (!cls) {
    let h = 0;
    for (const ch of String(name)) h = (h * 31 + ch.codePointAt(0)) >>> 0;
    style = ` style="color:hsl(${h % 360} 80% 70%)"`;
  }
  return `<span class="${cls}"${style}>${esc(name)}</span>`;
}

function snapshot(root) {
  const snap = { open: {}, values: {}, focus: null, scroll: {} };
  root.querySelectorAll('[data-scroll-key]').forEach((el) => {
    const atBottom = el.scrollHeight - el.scrollTop - el.clientHeight < 8;
    snap.scroll[el.dataset.scrollKey] = { top: el.scrollTop, atBottom };
  });
  root.querySelectorAll('details[data-key]').forEach((d) => { snap.open[d.dataset.key] = d.open; });
  root.querySelectorAll('[data-key]').forEach((el) => {
    if (el.matches('input[type=radio], input[type=checkbox]')) snap.values[el.dataset.key] = el.checked;
    else if (el.matches('input, textarea, select')) snap.values[el.dataset.key] = el.value;
  });
  const a = document.activeElement;
  if (a && root.contains(a) && a.dataset && a.dataset.key) {
    snap.focus = { key: a.dataset.key, start: a.selectionStart, end: a.selectionEnd };
  }
  return snap;
}

function restore(root, snap) {
  root.querySelectorAll('details[data-key]').forEach((d) => {
    if (d.dataset.key in snap.open) d.open = snap.open[d.dataset.key];
  });
  root.querySelectorAll('[data-key]').forEach((el) => {
    if (!(el.dataset.key in snap.values)) return;
    if (el.matches('input[type=radio], input[type=checkbox]')) el.checked = snap.values[el.dataset.key];
    else if (el.matches('input, textarea, select')) el.value = snap.values[el.dataset.key];
  });
  root.querySelectorAll('[data-scroll-key]').forEach((el) => {
    const sc = snap.scroll[el.dataset.scrollKey];
    if (sc) el.scrollTop = sc.atBottom ? el.scrollHeight : sc.top;
  });
  if (snap.focus) {
    const el = root.querySelector(`[data-key="${CSS.escape(snap.focus.key)}"]`);
    if (el) {
      el.focus();
      try { if (snap.focus.start != null) el.setSelectionRange(snap.focus.start, snap.focus.end); } catch (_) { /* radio */ }
    }
  }
}

function renderInto(id, data, fn, hydrate = null) {
  const key = JSON.stringify(data);
  if (rendered[id] === key) return false;
  rendered[id] = key;
  const el = $(id);
  const snap = snapshot(el);
  el.innerHTML = fn(data);
  if (hydrate) hydrate(el, snap);
  restore(el, snap);
  return true;
}

function actionForm(action, label, { cls = '', confirm = '', title = '', kind = '', extra = '', fields = {} } = {}) {
  const hidden = Object.entries(fields).map(([k, v]) => `<input type="hidden" name="${esc(k)}" value="${esc(v)}">`).join('');
  return `<form data-async action="${esc(action)}"${confirm ? ` data-confirm="${esc(confirm)}"` : ''}`
    + `${kind ? ` data-kind="${esc(kind)}"` : ''} ${extra}>${hidden}`
    + `<button type="submit" class="${esc(cls)}"${title ? ` title="${esc(title)}"` : ''}>${label}</button></form>`;
}

// ------------------------------------------------------------------ sections

function renderSwarm(s) {
  const agents = s.agents || [];
  const running = agents.filter((a) => a.phase === 'running').length;
  const sw = s.swarm || {};
  const chips = [
    `<span class="chip"><b>${running}</b>/${agents.length} running</span>`,
    `<span class="chip"><b>${(s.proposals || []).length}</b> pending</span>`,
  ];
  const main = sw.main_commit || sw.main;
  if (typeof main === 'string' && main) chips.push(`<span class="chip" title="desired state: refs/heads/main ${esc(main)}">main <b class="commit">${esc(main.slice(0, 8))}</b></span>`);
  if (sw.runtime) chips.push(`<span class="chip" title="runtime driver">runtime <b>${esc(sw.runtime)}</b></span>`);
  return chips.join('');
}

const NEGATIVE = new Set(['Stalled', 'Reconciling', 'Degraded']);  // good when False
const CRASH_LOOP = 'CrashLoopBackOff';

function condChip(c) {
  let cls = 'c-unk';
  let glyph = '…';
  if (c.status === 'True' || c.status === 'False') {
    const good = NEGATIVE.has(c.type) ? c.status === 'False' : c.status === 'True';
    cls = good ? 'c-ok' : (c.type === 'Reconciling' ? 'c-busy' : 'c-bad');
    glyph = good ? '✓' : (c.type === 'Reconciling' ? '⟳' : '✕');
  }
  const since = c.last_transition_time ? ` (since ${new Date(c.last_transition_time).toLocaleString()})` : '';
  const tip = `${c.type}=${c.status}${c.reason ? ` · ${c.reason}` : ''}${c.message ? `\n${c.message}` : ''}${since}`;
  return `<span class="chip ${cls}" title="${esc(tip)}">${glyph} ${esc(c.type)}</span>`;
}

function shownConditions(a) {
  // At a glance: hide the quiet ones (Stalled/Reconciling when False) and those shown as a badge
  // (UpToDate → needs update, LoggedIn → needs login, Stalled/CrashLoopBackOff → crash loop).
  return (a.conditions || []).filter((c) => {
    if (a.crash_loop && c.reason === CRASH_LOOP) return false;
    if (c.type === 'Degraded') return c.status === 'True';  // before a report it is Unknown
    if (NEGATIVE.has(c.type)) return c.status !== 'False';
    if (c.type === 'UpToDate' && a.needs_update) return false;
    if (c.type === 'LoggedIn' && a.needs_login) return false;
    return true;
  });
}

const condText = (c) => `${c.type}: ${c.reason}${c.message ? ` — ${c.message}` : ''}`;

function stateBadges(a) {
  // Loud badges for what needs the operator: crash loop, login, update.
  const out = [];
  if (a.crash_loop) {
    const c = (a.conditions || []).find((x) => x.reason === CRASH_LOOP) || {};
    out.push(`<span class="badge crash" title="${esc(`${condText(c)}\nsee ↳ logs below; it is started again after the back-off`)}">crash loop</span>`);
  }
  if (a.needs_login) {
    const c = (a.conditions || []).find((x) => x.type === 'LoggedIn') || {};
    const tip = `${condText(c)}\nlog in from ${a.name}'s web UI (claude asks for a browser login there)`;
    out.push(a.url
      ? `<a class="badge login" href="${esc(a.url)}" target="_blank" rel="noopener" title="${esc(tip)}">needs login ↗</a>`
      : `<span class="badge login" title="${esc(tip)}">needs login</span>`);
  }
  // Stopped on purpose: say so (quietly) instead of "needs update"; views.py clears needs_update.
  if (a.suspended) {
    out.push('<span class="badge quiet" title="spec.suspend is true in its agent.yaml; set it to false to run it">suspended</span>');
  } else if (a.held) {
    out.push(`<span class="badge quiet" title="${esc(`${a.held}; start it to run it again`)}">by request</span>`);
  }
  if (a.needs_update) {
    out.push(actionForm(`/api/agents/${encodeURIComponent(a.name)}/update`, 'needs update ↻', {
      cls: 'badge update', kind: 'lifecycle',
      confirm: `Update ${a.name} now? It is rebuilt/restarted at the desired commit.`,
      title: (a.conditions.find((c) => c.type === 'UpToDate') || {}).message || 'deployed commit differs from main',
    }));
  }
  return out.join(' ');
}

function dangerForms(a) {
  // Destroy keeps state (a tombstone under K3PT ST4TE); purge deletes it. The manager has neither.
  if (a.name === MANAGER) return '';
  const n = a.name;
  const url = `/api/agents/${encodeURIComponent(n)}/destroy`;
  const destroy = actionForm(url, 'DESTR0Y', {
    cls: 'small danger', kind: 'destroy', title: `remove ${n}; keep its notes and credentials`,
    confirm: `Destroy ${n}?\n\nIts container is removed and agents/${n}/ is deleted from main (a commit by you).\n\nKEPT: its notes (/state), claude credentials and sessions. They stay under K3PT ST4TE; a new agent named ${n} picks them up, or purge them there.`,
  });
  const purge = actionForm(url, 'PURG3', {
    cls: 'small danger solid', kind: 'destroy', title: `remove ${n} and delete all of its state`,
    fields: { purge: '1' },
    confirm: `Destroy ${n} AND delete all of its state?\n\nIts container is removed and agents/${n}/ is deleted from main (a commit by you).\n\nDELETED for good: its notes (/state), claude credentials (it has to log in again) and sessions (conversation history).\n\nThere is no undo.`,
  });
  return `<div class="danger-zone">${destroy}${purge}</div>`;
}

// ------------------------------------------------------------------ lazy per-agent blocks

const LAZY_LABEL = { describe: 'describe', logs: 'logs', config: 'config' };

function lazyBlock(kind, name) {
  const key = `${kind}-${name}`;
  const tools = kind === 'logs'
    ? `<select data-key="${esc(key)}-unit" data-lazy-param="unit" title="which journal">
        <option value="harness">harness service</option><option value="machine">whole machine</option></select>
      <select data-key="${esc(key)}-lines" data-lazy-param="lines" title="how many lines">
        <option>200</option><option>1000</option><option>5000</option></select>`
    : '';
  return `<details class="lazy lazy-${kind}" data-key="${esc(key)}" data-lazy="${kind}" data-agent="${esc(name)}">
    <summary>↳ ${LAZY_LABEL[kind]}</summary>
    <div class="lazy-bar">${tools}<button type="button" class="small" data-lazy-refresh title="fetch again">↻ refresh</button>
      <span class="lazy-meta"></span></div>
    <div class="lazy-out"></div>
  </details>`;
}

const lazyCache = new Map(); // data-key → { data, err, at, loading }
const lazySeq = new Map();

function lazyUrl(d) {
  const name = encodeURIComponent(d.dataset.agent);
  if (d.dataset.lazy === 'describe') return `/api/agents/${name}`;
  if (d.dataset.lazy === 'config') return `/api/agents/${name}/config`;
  const q = new URLSearchParams();
  d.querySelectorAll('[data-lazy-param]').forEach((el) => q.set(el.dataset.lazyParam, el.value));
  return `/api/agents/${name}/journal?${q}`;
}

function fmtBytes(n) {
  if (typeof n !== 'number') return '?';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i && n < 10 ? 1 : 0)} ${units[i]}`;
}

function whenCell(iso) {
  return iso ? `<span class="ago" data-ago="${esc(iso)}" title="${esc(new Date(iso).toLocaleString())}">${esc(ago(iso))}</span>` : '';
}

function condRowClass(c) {
  if (c.status !== 'True' && c.status !== 'False') return 'c-unk';
  const good = NEGATIVE.has(c.type) ? c.status === 'False' : c.status === 'True';
  return good ? 'c-ok' : 'c-bad';
}

function renderDescribe(d) {
  const conds = (d.conditions || []).map((c) => `<tr>
      <td>${esc(c.type)}</td><td class="${condRowClass(c)}">${esc(c.status)}</td><td>${esc(c.reason)}</td>
      <td class="wrap">${esc(c.message)}</td><td>${whenCell(c.last_transition_time)}</td></tr>`).join('');
  const deploys = (d.deploys || []).length
    ? `<table class="mini">${d.deploys.map((x) => `<tr>
        <td class="st-${esc(x.state)}" title="${esc((x.tags || []).join(' '))}">${esc(x.tag || x.state)}</td>
        <td><span class="commit" title="${esc(x.commit || '')}">${esc(x.commit_short || '')}</span></td>
        <td class="wrap">${x.title ? `<span class="deploy-title">${esc(x.title)}</span> ` : ''}${esc(x.note)}</td>
        <td>${whenCell(x.at)}</td></tr>`).join('')}</table>`
    : '<p class="empty">never deployed</p>';
  const notes = [];
  if (d.crash && (d.crash.times || []).length) {
    const next = d.crash.stalled
      ? 'stalled: it stays down until you start it (or its desired state changes)'
      : (d.crash.restart_at ? `next start ${new Date(d.crash.restart_at).toLocaleTimeString([], { hour12: false })}` : '');
    notes.push(`<p class="desc-note bad">crash back-off: ${plural(d.crash.times.length, 'crash', 'crashes')} recently${next ? ` · ${esc(next)}` : ''}</p>`);
  }
  if (d.failure) {
    const f = d.failure;
    const retry = f.retry_at ? ` · retry ${new Date(f.retry_at).toLocaleTimeString([], { hour12: false })}` : '';
    notes.push(`<p class="desc-note bad">last failure (${esc(f.kind || '?')}): ${esc(f.action || '')} failed${f.attempts ? ` (attempt ${esc(f.attempts)})` : ''}: ${esc(f.message || '')}${esc(retry)}</p>`);
  }
  const events = (d.events || []).length
    ? `<table class="mini">${d.events.map((e) => `<tr>
        <td>${esc(e.type)}</td><td class="wrap">${esc(e.message)}</td><td>${whenCell(e.at)}</td></tr>`).join('')}</table>`
    : '<p class="empty">no recent events</p>';
  return `<div class="desc">${notes.join('')}
    <table class="mini conds-full"><thead><tr><th>condition</th><th>status</th><th>reason</th><th>message</th><th>since</th></tr></thead><tbody>${conds}</tbody></table>
    <div class="desc-cols"><div><h4>last deploys</h4>${deploys}</div><div><h4>recent events</h4>${events}</div></div>
  </div>`;
}

function renderLogs(j, d) {
  const text = (j.text || '').replace(/\n$/, '');
  return `<pre class="logs" data-scroll-key="${esc(d.dataset.key)}-pre">${text ? esc(text) : '<span class="empty">(no lines)</span>'}</pre>`;
}

function renderConfig(c) {
  const sw = (state && state.swarm) || {};
  const local = sw.runtime === 'local';
  const dir = `agents/${c.name}/`;
  let nix;
  if (c.agent_nix != null) {
    nix = `<pre class="code">${esc(c.agent_nix)}</pre>${local ? '<p class="empty">not built: the local runtime does not build Nix</p>' : ''}`;
  } else {
    nix = `<p class="empty">${local ? 'no agent.nix — the local runtime does not build Nix' : 'no agent.nix: the container is the base template plus the manifest'}</p>`;
  }
  const settings = c.settings == null
    ? '<p class="empty">not rendered yet (written at deploy)</p>'
    : `<pre class="code">${esc(JSON.stringify(c.settings, null, 2))}</pre>`;
  return `<div class="cfg">
    <div><h4>${esc(dir)}agent.yaml</h4><pre class="code">${esc(c.manifest || '')}</pre></div>
    <div><h4>${esc(dir)}agent.nix</h4>${nix}</div>
    <div><h4>settings.json <span class="hint">rendered from the manifest</span></h4>${settings}</div>
  </div>`;
}

const LAZY_RENDER = { describe: renderDescribe, logs: renderLogs, config: renderConfig };

function lazyMeta(d, entry) {
  if (!entry) return '';
  if (entry.loading && !entry.data && !entry.err) return 'loading…';
  const parts = [];
  const data = entry.data || {};
  if (d.dataset.lazy === 'logs' && entry.data) {
    parts.push(data.unit || 'whole machine journal');
    parts.push(plural((data.text || '').split('\n').filter(Boolean).length, 'line'));
  }
  if (d.dataset.lazy === 'config' && data.commit_short) parts.push(`at ${data.commit_short}`);
  if (entry.at) parts.push(`fetched ${new Date(entry.at).toLocaleTimeString([], { hour12: false })}`);
  if (entry.loading) parts.push('refreshing…');
  return parts.join(' · ');
}

function fillLazy(d) {
  const entry = lazyCache.get(d.dataset.key);
  const out = d.querySelector('.lazy-out');
  d.querySelector('.lazy-meta').textContent = lazyMeta(d, entry);
  d.querySelector('[data-lazy-refresh]').classList.toggle('busy', Boolean(entry && entry.loading));
  if (!entry || (!entry.data && !entry.err)) {
    out.innerHTML = '<p class="empty">loading…</p>';
  } else if (entry.err) {
    out.innerHTML = `<p class="lazy-err">${esc(entry.err)}</p>${entry.data ? LAZY_RENDER[d.dataset.lazy](entry.data, d) : ''}`;
  } else {
    out.innerHTML = LAZY_RENDER[d.dataset.lazy](entry.data, d);
  }
}

function hydrateAgents(root, snap) {
  // After a redraw: re-fill lazy blocks from the cache. Those that were open stay "loaded"
  // (no refetch when restore() reopens them); the others fetch again when next opened.
  root.querySelectorAll('details[data-lazy]').forEach((d) => {
    fillLazy(d);
    if (snap.open[d.dataset.key] && lazyCache.has(d.dataset.key)) d.dataset.loaded = '1';
  });
}

const findLazy = (key) => document.querySelector(`details[data-lazy][data-key="${CSS.escape(key)}"]`);

async function loadLazy(d) {
  const key = d.dataset.key;
  const url = lazyUrl(d);
  const seq = (lazySeq.get(key) || 0) + 1;
  lazySeq.set(key, seq);
  const prev = lazyCache.get(key) || {};
  lazyCache.set(key, { ...prev, loading: true });
  d.dataset.loaded = '1';
  fillLazy(d);
  let entry;
  try {
    const r = await fetch(url, { headers: { Accept: 'application/json' }, cache: 'no-store' });
    const data = await r.json().catch(() => ({}));
    if (!r.ok) {
      const e = data.error || {};
      throw new Error(e.message || `${r.status} ${r.statusText}`);
    }
    entry = { data, err: '', at: Date.now(), loading: false };
  } catch (e) {
    entry = { data: d.dataset.lazy === 'logs' ? null : prev.data, err: String(e.message || e), at: Date.now(), loading: false };
  }
  if (lazySeq.get(key) !== seq) return; // a newer request for this block is under way
  lazyCache.set(key, entry);
  const cur = findLazy(key); // the table may have been redrawn meanwhile
  if (!cur) return;
  fillLazy(cur);
  const pre = cur.querySelector('pre.logs');
  if (pre) pre.scrollTop = pre.scrollHeight;
  tickClocks();
}

document.addEventListener('toggle', (ev) => {
  const d = ev.target;
  if (!(d instanceof HTMLDetailsElement) || !d.matches('details[data-lazy]')) return;
  if (!d.open) { delete d.dataset.loaded; return; }
  if (!d.dataset.loaded) loadLazy(d);
}, true);

document.addEventListener('change', (ev) => {
  const d = ev.target.closest && ev.target.closest('[data-lazy-param]') && ev.target.closest('details[data-lazy]');
  if (d) loadLazy(d);
});

function problem(a) {
  // The first condition that is not fine, as a one-line subtitle under the agent's name.
  const c = (a.conditions || []).find((x) => x.type !== 'UpToDate' && (x.reason || x.message)
    && (NEGATIVE.has(x.type) ? x.status === 'True' : x.status === 'False'));
  const stalled = (a.conditions || []).some((x) => x.type === 'Stalled' && x.status === 'True');
  const bad = a.phase === 'failed' || stalled;
  if (c) return { bad, text: `${c.type}: ${c.reason}${c.message ? ` — ${c.message}` : ''}` };
  if (a.held) return { bad: false, text: `held: ${a.held}` };
  if (a.detail) return { bad, text: a.detail };
  return null;
}

function renderAgents({ agents, err }) {
  if (err) return `<p class="empty">Agent status is unavailable right now (${esc(err)}); the controller log says more.</p>`;
  if (!agents.length) {
    return '<p class="empty">No agents observed yet. Run a pass with ⟳ reconcile (or <code>hyperhive reconcile --dry-run</code> to see the plan); new agents arrive as spawn proposals under APPR0VALS.</p>';
  }
  const rows = agents.map((a) => {
    const name = esc(a.name);
    const p = problem(a);
    const running = a.phase === 'running';
    const verbs = running ? ['restart', 'kill'] : ['start'];
    const confirmText = {
      start: `Start ${a.name}?`,
      restart: `Restart ${a.name}? A turn in progress is interrupted.`,
      kill: `Kill ${a.name}? It stays stopped until started again.`,
      update: `Update ${a.name} to the desired commit now?`,
    };
    if (!a.needs_update) verbs.push('update');
    const buttons = verbs.map((v) => actionForm(`/api/agents/${encodeURIComponent(a.name)}/${v}`, v, {
      cls: `small${v === 'kill' ? ' danger' : ''}`, confirm: confirmText[v], kind: 'lifecycle',
    })).join('');
    const link = a.url
      ? `<a href="${esc(a.url)}" target="_blank" rel="noopener" title="open ${name}'s web UI">ui&nbsp;↗</a>`
      : '<span class="empty">—</span>';
    return `<tr class="agent-main" data-agent="${name}">
      <td class="c-agent"><div class="agent-name">${name}${a.name === MANAGER ? '<span class="role">mgr</span>' : ''}</div>
        ${p ? `<div class="agent-sub${p.bad ? ' bad' : ''}">${esc(p.text)}</div>` : ''}</td>
      <td class="c-state"><div class="badges"><span class="badge phase-${esc(['running', 'failed', 'stopped', 'absent'].includes(a.phase) ? a.phase : 'unknown')}">${esc(a.phase)}</span>${stateBadges(a)}</div></td>
      <td class="c-conds"><div class="conds">${shownConditions(a).map(condChip).join('')}</div></td>
      <td class="c-model">${a.model ? `<span class="chip" title="model ${esc(a.model)}">${esc(a.model)}</span>` : ''}</td>
      <td class="c-deployed">${a.commit_short ? `<span class="commit" title="deployed ${esc(a.commit)}">${esc(a.commit_short)}</span>` : '<span class="empty">never deployed</span>'}${a.commit_differs && a.desired_short ? ` <span class="dim desired" title="desired (main)">→&nbsp;${esc(a.desired_short)}</span>` : ''}</td>
      <td class="c-ui">${link}</td>
      <td class="right c-actions"><div class="lifecycle">${buttons}</div></td>
    </tr>
    <tr class="agent-more" data-agent-more="${name}"><td colspan="7"><div class="more">
      ${lazyBlock('describe', a.name)}${lazyBlock('logs', a.name)}${lazyBlock('config', a.name)}${dangerForms(a)}
    </div></td></tr>`;
  }).join('');
  // fixed columns: an open log or config block scrolls inside its own box instead of widening the table
  return `<table><colgroup><col class="w-agent"><col class="w-state"><col class="w-conds"><col class="w-model"><col class="w-deployed"><col class="w-ui"><col class="w-actions"></colgroup>
    <thead><tr><th>agent</th><th>state</th><th>conditions</th><th>model</th><th>deployed</th><th>ui</th><th></th></tr></thead><tbody>${rows}</tbody></table>`;
}

function diffStats(diff) {
  let add = 0; let del = 0; let files = 0;
  for (const l of diff.split('\n')) {
    if (l.startsWith('diff --git')) files += 1;
    else if (l.startsWith('+') && !l.startsWith('+++')) add += 1;
    else if (l.startsWith('-') && !l.startsWith('---')) del += 1;
  }
  return { add, del, files };
}

function renderDiff(diff) {
  return diff.replace(/\n$/, '').split('\n').map((l) => {
    let cls = '';
    if (l.startsWith('diff --git')) cls = 'file';
    else if (l.startsWith('+++') || l.startsWith('---') || l.startsWith('index ') || l.startsWith('new file') || l.startsWith('deleted file')) cls = 'meta';
    else if (l.startsWith('@@')) cls = 'hunk';
    else if (l.startsWith('+')) cls = 'add';
    else if (l.startsWith('-')) cls = 'del';
    return `<span${cls ? ` class="${cls}"` : ''}>${esc(l)}</span>`;
  }).join('');
}

function renderProposals(props) {
  if (!props.length) {
    return '<p class="empty">No proposals. The manager proposes spawns with <code>request_spawn</code> and config changes with <code>request_apply_commit</code>; you approve here or with <code>git tag approved/N proposal/N &amp;&amp; git push</code>.</p>';
  }
  return props.map((p) => {
    const st = diffStats(p.diff || '');
    const lines = (p.diff || '').split('\n').length;
    const agents = (p.agents || []).map(who).join(', ');
    const diff = p.diff
      ? `<details class="diff" data-key="diff-${p.id}"${lines <= 60 ? ' open' : ''}>
          <summary>diff · ${plural(st.files, 'file')} · <span class="plus">+${st.add}</span> <span class="minus">−${st.del}</span>${p.diff_truncated ? ' · truncated' : ''}</summary>
          <pre class="diff">${renderDiff(p.diff)}</pre>
          ${p.diff_truncated ? `<a href="/api/proposals/${p.id}" target="_blank">full proposal (JSON)</a>` : ''}
        </details>`
      : '<div class="meta">(empty diff)</div>';
    return `<div class="card proposal" data-proposal="${p.id}">
      <div class="head"><span class="id">#${p.id}</span><span class="chip">${esc(p.kind)}</span>${agents}
        <span class="ago" data-ago="${esc(p.created)}">${esc(ago(p.created))}</span></div>
      <div class="title">${esc(p.title)}</div>
      ${p.note ? `<div class="note">“${esc(p.note)}”</div>` : ''}
      <div class="meta">proposal/${p.id} · commit <span class="commit">${esc(String(p.commit).slice(0, 8))}</span>${p.base ? ` on <span class="commit">${esc(String(p.base).slice(0, 8))}</span>` : ''}</div>
      ${diff}
      <div class="buttons">
        ${actionForm(`/api/proposals/${p.id}/approve`, '◆ APPR0VE', { cls: 'ok', kind: 'approve', confirm: `Approve #${p.id} (${p.title})? It is deployed right away.` })}
        ${actionForm(`/api/proposals/${p.id}/deny`, '✕ deny', { cls: 'danger', kind: 'deny', extra: `data-prompt="${esc(`Why deny #${p.id}? The manager reads your reason.`)}" data-prompt-field="note"` })}
      </div>
    </div>`;
  }).join('');
}

function renderQuestions(qs) {
  if (!qs.length) {
    return '<p class="empty">No open questions. The manager asks with <code>ask_operator</code>; your answer reaches its inbox as an OperatorAnswered event.</p>';
  }
  return qs.map((q) => {
    const k = `q${q.id}`;
    let input;
    if (q.options && q.options.length) {
      const type = q.multi ? 'checkbox' : 'radio';
      input = `<div class="options">${q.options.map((o, i) => `<label><input type="${type}" name="answer" value="${esc(o)}" data-key="${k}-o${i}"${q.multi ? '' : ' required'}> ${esc(o)}</label>`).join('')}</div>`;
    } else {
      input = `<textarea name="answer" rows="2" required data-key="${k}-text" placeholder="your answer…"></textarea>`;
    }
    const ttl = q.deadline_at ? `<span class="chip ttl" data-deadline="${esc(q.deadline_at)}" title="auto-cancelled at ${esc(new Date(q.deadline_at).toLocaleString())}"></span>` : '';
    return `<div class="card question" data-question="${q.id}">
      <div class="head"><span class="id">#${q.id}</span>from ${who(q.asker || MANAGER)}${q.multi ? '<span class="chip">pick any</span>' : ''}${ttl}
        <span class="ago" data-ago="${esc(q.asked_at)}">${esc(ago(q.asked_at))}</span></div>
      <div class="title">${esc(q.question)}</div>
      <form data-async action="/api/questions/${q.id}/answer" data-kind="answer"${q.multi ? ' data-min-one="answer"' : ''}>
        ${input}
        <div class="buttons"><button type="submit" class="ok">answer</button>
          <button type="button" class="small" data-cancel-question="${q.id}">cancel question</button></div>
      </form>
    </div>`;
  }).join('');
}

function msgRow(m, fresh) {
  const toOp = m.to === OPERATOR;
  const kind = m.kind && m.kind !== 'message' ? `<span class="kind">${esc(m.kind)}</span>` : '';
  return `<div class="msg${toOp ? ' to-op' : ''}${fresh ? ' fresh' : ''}" data-id="${esc(m.id)}">
    <time datetime="${esc(m.sent_at)}" title="${esc(m.sent_at)}">${esc(fmtTime(m.sent_at))}</time>
    <span class="route">${who(m.from)}<span class="arrow">→</span>${who(m.to)}</span>
    <span class="body" title="click to expand">${kind}${esc(m.body)}</span></div>`;
}

function renderInbox(msgs) {
  if (!msgs.length) return '<p class="empty">Nothing for you yet. Agents reach you with <code>send(to: "operator", …)</code>.</p>';
  return msgs.map((m) => msgRow(m, false)).join('');
}

function renderTombstones(kept) {
  if (!kept.length) {
    return '<p class="empty">Nothing kept. DESTR0Y on an agent keeps its notes, claude credentials and sessions here (a new agent with the same name picks them up); PURG3 deletes them.</p>';
  }
  const rows = kept.map((t) => {
    const n = t.name;
    const size = t.bytes == null ? 'unknown size' : fmtBytes(t.bytes);
    const last = t.commit_short ? `<span class="dim" title="last deployed commit">at <span class="commit">${esc(t.commit_short)}</span></span>` : '';
    return `<tr data-tombstone="${esc(t.id)}" data-name="${esc(n)}">
      <td class="agent-name">${esc(n)}</td>
      <td>${t.in_place ? 'left in place' : 'destroyed'} ${whenCell(t.destroyed_at)}</td>
      <td>${last}</td>
      <td>${esc(size)}</td>
      <td><code class="path">${esc(t.path)}</code></td>
      <td class="right">${actionForm(`/api/tombstones/${encodeURIComponent(t.id)}/purge`, 'PURG3', {
    cls: 'small danger solid', kind: 'purge', title: `delete this kept state of ${n} for good`,
    confirm: `Purge the kept state of ${n}?\n\nDELETED for good (${size} at ${t.path}): its notes (/state), claude credentials and sessions (conversation history). A new agent named ${n} would start from nothing.\n\nThere is no undo.`,
  })}</td></tr>`;
  }).join('');
  return `<table class="kept">${rows}</table>`;
}

function renderHistory(hist) {
  if (!hist.length) return '<p class="empty">No decisions yet. Approved, denied, deployed and failed proposals show up here (every deploy is a tag in meta.git).</p>';
  return `<div class="hist">${hist.map((p) => `
    <span class="id">#${p.id}</span><span class="st-${esc(p.state)}">${esc(p.state)}</span>
    <span>${esc(p.title)}</span><span class="ago" data-ago="${esc(p.created)}">${esc(ago(p.created))}</span>
    ${p.note ? `<span class="why">${esc(p.note)}</span>` : ''}`).join('')}</div>`;
}

function renderRecipients(names) {
  const sel = $('send-to');
  const key = JSON.stringify(names);
  if (rendered['send-to'] === key) return;
  rendered['send-to'] = key;
  const prev = sel.value || MANAGER;
  sel.innerHTML = names.map((n) => `<option value="${esc(n)}">${esc(n)}</option>`).join('');
  if (names.includes(prev)) sel.value = prev;
}

function render(s) {
  state = s;
  $('swarm').innerHTML = renderSwarm(s);
  const errors = s.errors || {};
  renderInto('agents', { agents: s.agents || [], err: errors.status || errors.agents || '' }, renderAgents, hydrateAgents);
  renderInto('kept', s.tombstones || [], renderTombstones);
  renderInto('proposals', s.proposals || [], renderProposals);
  renderInto('questions', s.questions || [], renderQuestions);
  renderInto('history', s.history || [], renderHistory);
  if (renderInto('inbox', s.inbox || [], renderInbox)) $('inbox').scrollTop = $('inbox').scrollHeight;
  renderRecipients(s.recipients || []);
  $('agents-count').textContent = (s.agents || []).length || '';
  $('kept-count').textContent = (s.tombstones || []).length || '';
  $('proposals-count').textContent = (s.proposals || []).length || '';
  $('questions-count').textContent = (s.questions || []).length || '';
  $('inbox-count').textContent = (s.inbox || []).length || '';
  const errs = Object.entries(s.errors || {});
  setBanner(errs.length ? `some data could not be loaded:\n${errs.map(([k, v]) => `  ${k}: ${v}`).join('\n')}` : '');
  tickClocks();
  notifyFromState(s);
  const pending = (s.proposals || []).length + (s.questions || []).length;
  document.title = pending ? `(${pending}) hyperhive · dashboard` : 'hyperhive · dashboard';
}

function setBanner(text) {
  const b = $('banner');
  b.textContent = text;
  b.hidden = !text;
}

// ------------------------------------------------------------------ state fetching

function loggedOut() {
  // the session expired or the operator key changed: reloading shows the login page
  setBanner('logged out — run `hyperhive dashboard` on the controller host and open the URL it prints');
}

let refreshing = null;
let refreshTimer = null;

async function refreshState() {
  if (refreshing) return refreshing;
  refreshing = (async () => {
    try {
      const r = await fetch('/api/state', { headers: { Accept: 'application/json' }, cache: 'no-cache' });
      if (r.status === 401) { loggedOut(); return; }
      if (!r.ok) throw new Error(`${r.status} ${r.statusText}`);
      render(await r.json());
    } catch (e) {
      setBanner(`dashboard unreachable (${e.message || e}) — retrying every ${REFRESH_MS / 1000}s`);
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

function scheduleRefresh(ms = 400) {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(refreshState, ms);
}

// ------------------------------------------------------------------ toasts

function toast(text, kind = '') {
  const t = document.createElement('div');
  t.className = `toast ${kind}`;
  t.textContent = text;
  t.onclick = () => t.remove();
  $('toasts').appendChild(t);
  setTimeout(() => t.remove(), kind === 'err' ? 10000 : 5000);
}

function describe(form, data) {
  switch (form.dataset.kind) {
    case 'approve': return `approved #${data.id} — deploying`;
    case 'deny': return `denied #${data.id}`;
    case 'spawn': return `proposed #${data.id}: ${data.title} — approve it above`;
    case 'send': return `sent to ${data.message ? data.message.to : '?'}`;
    case 'lifecycle': return data.result || 'done';
    case 'destroy': return data.result || `destroyed ${data.agent}`;
    case 'purge': return data.result || `purged ${data.agent}`;
    case 'answer': return `answered question #${data.id}`;
    case 'cancel': return `cancelled question #${data.id}`;
    case 'reconcile': {
      const plan = data.plan || [];
      const head = data.dry_run ? 'plan' : 'pass';
      let text = plan.length
        ? `${head}: ${plural(plan.length, 'action')}\n${plan.map((a) => `  ${a.action} ${a.agent} — ${a.reason}`).join('\n')}`
        : `${head}: in sync, nothing to do`;
      if ((data.errors || []).length) text += `\nerrors:\n${data.errors.map((e) => `  ${e}`).join('\n')}`;
      return text;
    }
    default: return 'done';
  }
}

// ------------------------------------------------------------------ async forms

async function post(action, fields) {
  // JSON only: the dashboard refuses forms (a form is what another site can post at it)
  const r = await fetch(action, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
    body: JSON.stringify(fields),
  });
  if (r.status === 401) loggedOut();
  const data = await r.json().catch(() => ({}));
  if (!r.ok) {
    const e = data.error || {};
    throw new Error(`${e.message || `${r.status} ${r.statusText}`}${e.field && !(e.message || '').includes(e.field) ? ` (${e.field})` : ''}`);
  }
  return data;
}

function formFields(form) {
  // a form's fields as a JSON object; a name given more than once (checkboxes) becomes a list
  const out = {};
  for (const [k, v] of new FormData(form)) {
    if (!(k in out)) out[k] = v;
    else out[k] = [].concat(out[k], v);
  }
  return out;
}

async function submitAsync(form, submitter) {
  if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) return;
  const body = formFields(form);
  if (form.dataset.prompt) {
    const v = window.prompt(form.dataset.prompt, '');
    if (v === null) return;
    if (!v.trim()) { toast('a reason is required', 'err'); return; }
    body[form.dataset.promptField || 'note'] = v.trim();
  }
  if (form.dataset.minOne && !(form.dataset.minOne in body)) { toast('pick at least one option', 'err'); return; }
  const btn = submitter || form.querySelector('button[type=submit]');
  const buttons = [...form.querySelectorAll('button')];
  buttons.forEach((b) => { b.disabled = true; });
  if (btn) btn.classList.add('busy');
  try {
    const data = await post(form.getAttribute('action'), body);
    toast(describe(form, data), 'ok');
    if (form.hasAttribute('data-reset')) form.reset();
    if (form.id === 'send') $('send-body').value = '';
    await refreshState();
  } catch (e) {
    toast(String(e.message || e), 'err');
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
    if (btn) btn.classList.remove('busy');
  }
}

document.addEventListener('submit', (ev) => {
  const form = ev.target.closest('form[data-async]');
  if (!form) return;
  ev.preventDefault();
  submitAsync(form, ev.submitter);
});

document.addEventListener('click', async (ev) => {
  const refresh = ev.target.closest('[data-lazy-refresh]');
  if (refresh) {
    loadLazy(refresh.closest('details[data-lazy]'));
    return;
  }
  const cancel = ev.target.closest('[data-cancel-question]');
  if (cancel) {
    const id = cancel.dataset.cancelQuestion;
    if (!window.confirm(`Cancel question #${id}? The manager gets "[cancelled]" as the answer.`)) return;
    cancel.disabled = true;
    cancel.classList.add('busy');
    try {
      await post(`/api/questions/${id}/cancel`, {});
      toast(`cancelled question #${id}`, 'ok');
      await refreshState();
    } catch (e) {
      toast(String(e.message || e), 'err');
    } finally {
      cancel.disabled = false;
      cancel.classList.remove('busy');
    }
    return;
  }
  const body = ev.target.closest('.msg .body');
  if (body && !window.getSelection().toString()) body.classList.toggle('full');
});

$('send-body').addEventListener('keydown', (ev) => {
  if (ev.key === 'Enter' && (ev.ctrlKey || ev.metaKey)) {
    ev.preventDefault();
    $('send').requestSubmit();
  }
});

// ------------------------------------------------------------------ live message flow (SSE)

let lastFlowId = 0;
let flowUnseen = 0;

function flowAtBottom() {
  const f = $('flow');
  return f.scrollHeight - f.scrollTop - f.clientHeight < 40;
}

function appendFlow(m) {
  if (m.id <= lastFlowId) return;
  lastFlowId = m.id;
  const f = $('flow');
  const stick = flowAtBottom();
  $('flow-empty')?.remove();
  f.insertAdjacentHTML('beforeend', msgRow(m, flowLive));
  while (f.children.length > FLOW_MAX) f.firstElementChild.remove();
  if (stick || !flowLive) {
    f.scrollTop = f.scrollHeight;
  } else {
    flowUnseen += 1;
    $('flow-new').textContent = `↓ ${flowUnseen} new`;
    $('flow-new').hidden = false;
  }
}

let flowLive = false;
const pageOpened = Date.now();

function connectFlow() {
  const es = new EventSource('/messages/stream?backlog=200');
  let liveTimer = null;
  es.addEventListener('open', () => {
    $('live').className = 'live on';
    $('live').textContent = '● live';
    clearTimeout(liveTimer);
    liveTimer = setTimeout(() => { flowLive = true; }, 800); // the backlog arrives first
  });
  es.addEventListener('message', (ev) => {
    let m;
    try { m = JSON.parse(ev.data); } catch (_) { return; }
    appendFlow(m);
    if (m.to === OPERATOR && Date.parse(m.sent_at) > pageOpened) notify(`message from ${m.from}`, m.body, `msg-${m.id}`);
    if (flowLive) scheduleRefresh();
  });
  es.addEventListener('error', () => {
    $('live').className = 'live off';
    $('live').textContent = '● reconnecting';
  });
}

$('flow').addEventListener('scroll', () => {
  if (flowAtBottom()) { flowUnseen = 0; $('flow-new').hidden = true; }
});
$('flow-new').addEventListener('click', () => {
  $('flow').scrollTop = $('flow').scrollHeight;
  flowUnseen = 0;
  $('flow-new').hidden = true;
});

// ------------------------------------------------------------------ browser notifications (opt-in)

const notif = {
  supported: 'Notification' in window && window.isSecureContext,
  muted: localStorage.getItem('hyperhive.muted') === '1',
  seeded: false,
  seen: new Set(),
};

function notify(title, body, tag) {
  if (!notif.supported || notif.muted || Notification.permission !== 'granted') return;
  try {
    const n = new Notification(`hyperhive · ${title}`, { body: String(body || '').slice(0, 240), tag: `hyperhive-${tag}` });
    n.onclick = () => { window.focus(); n.close(); };
  } catch (e) {
    console.debug('notification failed', e);
  }
}

function notifyFromState(s) {
  const items = [
    ...(s.proposals || []).map((p) => [`p${p.id}`, `proposal #${p.id}`, p.title]),
    ...(s.questions || []).map((q) => [`q${q.id}`, `question #${q.id}`, q.question]),
    ...(s.agents || []).filter((a) => a.crash_loop).map((a) => {
      const c = (a.conditions || []).find((x) => x.reason === CRASH_LOOP) || {};
      return [`crash-${a.name}-${c.last_transition_time}`, `${a.name} is crash-looping`, c.message];
    }),
  ];
  for (const [key, title, body] of items) {
    if (!notif.seen.has(key) && notif.seeded) notify(title, body, key);
    notif.seen.add(key);
  }
  notif.seeded = true;
}

function renderNotifyButton() {
  const wrap = $('notify');
  const btn = $('notify-btn');
  if (!notif.supported) { wrap.hidden = true; return; }
  wrap.hidden = false;
  const perm = Notification.permission;
  btn.disabled = perm === 'denied';
  if (perm === 'denied') { btn.textContent = '○ blocked'; btn.title = 'notifications are blocked for this site in the browser settings'; return; }
  if (perm === 'default') { btn.textContent = '○ notify'; return; }
  btn.textContent = notif.muted ? '○ muted' : '● notify';
  btn.title = notif.muted ? 'notifications muted — click to unmute' : 'notifications on — click to mute';
}

$('notify-btn').addEventListener('click', async () => {
  if (Notification.permission === 'default') {
    await Notification.requestPermission();
  } else if (Notification.permission === 'granted') {
    notif.muted = !notif.muted;
    localStorage.setItem('hyperhive.muted', notif.muted ? '1' : '0');
  }
  renderNotifyButton();
});

// ------------------------------------------------------------------ budgets (SP3ND)
// /api/budget: spend against budget per agent and swarm-wide this UTC day, a bar each, and a
// one-off extension (JSON POST /api/budget/allow, like every other action here).

const budgetSeen = new Set();

function budgetRow(s) {
  const swarm = s.scope === 'swarm';
  const name = swarm ? '(swarm)' : s.agent;
  const frac = s.fraction == null ? 0 : Math.min(1, s.fraction);
  const money = (v) => (v == null ? '—' : `$${Number(v).toFixed(4)}`);
  const limit = s.limit_usd != null || s.limit_tokens != null
    ? [s.limit_usd != null ? `${money(s.spent_usd)} of ${money(s.limit_usd)}` : '',
      s.limit_tokens != null ? `${s.spent_tokens} of ${s.limit_tokens} tokens` : ''].filter(Boolean).join(' · ')
    : `${money(s.spent_usd)} · no budget`;
  const pct = s.fraction == null ? '' : `${Math.round(s.fraction * 100)}%`;
  const ext = s.extensions ? ` <span class="dim" title="extensions granted today">(+${money(s.extension_usd)})</span>` : '';
  const state = s.held ? `<span class="budget-held" title="${esc(s.held)}">HELD</span>` : esc(s.level);
  const canAllow = s.level !== 'unlimited';
  const form = canAllow
    ? `<form class="budget-allow" data-budget-allow="${esc(swarm ? '' : s.agent)}">
         <input name="usd" type="number" min="0" step="any" required placeholder="USD" aria-label="extension in USD for ${esc(name)}">
         <button type="submit" class="small" title="a one-off extension for today (UTC), recorded and sent to the manager">allow</button>
       </form>`
    : '';
  return `<tr data-budget="${esc(name)}">
    <td>${esc(name)}</td>
    <td><div class="budget-bar ${esc(s.level)}" role="meter" aria-valuemin="0" aria-valuemax="100" aria-valuenow="${Math.round(frac * 100)}" title="${esc(s.message)}"><div class="fill" style="width:${(frac * 100).toFixed(1)}%"></div></div></td>
    <td class="right">${esc(pct)}</td>
    <td>${esc(limit)}${ext}</td>
    <td>${s.turns}</td>
    <td>${state}</td>
    <td class="right">${form}</td>
  </tr>`;
}

function renderBudget(r) {
  const rows = [...(r.agents || []), ...(r.swarm ? [r.swarm] : [])];
  if (!rows.length) return '<p class="empty">No agents yet. Give one a budget with <code>spec.budget: {usdPerDay: 5}</code> in its manifest.</p>';
  return `<table class="budget-table"><thead><tr><th>agent</th><th>spend</th><th></th><th>against</th><th>turns</th><th>state</th><th></th></tr></thead>
    <tbody>${rows.map(budgetRow).join('')}</tbody></table>`;
}

async function refreshBudget() {
  try {
    const r = await fetch('/api/budget', { headers: { Accept: 'application/json' }, cache: 'no-cache' });
    if (!r.ok) return;
    const data = await r.json();
    $('budget-panel').hidden = data.enabled === false;
    if (data.enabled === false) return;
    renderInto('budget', { ...data, now: 0 }, renderBudget);
    const held = (data.agents || []).filter((a) => a.held);
    $('budget-count').textContent = held.length ? `${held.length} held` : '';
    $('budget-window').textContent = `spend against budget, UTC day ${data.window}`;
    for (const a of held) {
      const key = `budget-${a.agent}-${data.window}`;
      if (!budgetSeen.has(key) && notif.seeded) notify(`${a.agent} is over budget`, a.held, key);
      budgetSeen.add(key);
    }
  } catch (e) {
    console.debug('budget refresh failed', e);
  }
}

document.addEventListener('submit', async (ev) => {
  const form = ev.target.closest('form[data-budget-allow]');
  if (!form) return;
  ev.preventDefault();
  const agent = form.dataset.budgetAllow;
  const usd = Number(new FormData(form).get('usd'));
  const body = agent ? { agent, usd } : { swarm: true, usd };
  const btn = form.querySelector('button');
  btn.disabled = true;
  try {
    const data = await post('/api/budget/allow', body);
    toast(`extended: ${data.result}`, 'ok');
    form.reset();
    await refreshBudget();
  } catch (e) {
    toast(String(e.message || e), 'err');
  } finally {
    btn.disabled = false;
  }
});

// ------------------------------------------------------------------ boot

const historyPanel = $('history-panel');
if (localStorage.getItem('hyperhive.history') === 'closed') historyPanel.open = false;
historyPanel.addEventListener('toggle', () => {
  localStorage.setItem('hyperhive.history', historyPanel.open ? 'open' : 'closed');
});

renderNotifyButton();
refreshState();
refreshBudget();
connectFlow();
setInterval(() => { if (!document.hidden) { refreshState(); refreshBudget(); } }, REFRESH_MS);
setInterval(tickClocks, 1000);
document.addEventListener('visibilitychange', () => { if (!document.hidden) refreshState(); });
