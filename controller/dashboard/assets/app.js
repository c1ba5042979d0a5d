// hyperhive dashboard: renders /api/state, runs async forms, tails /messages/stream (SSE).
// Vanilla JS, no build step. Sections re-render only when their slice of the state changed,
// and keep open <details>, typed text and focus across re-renders (keys: data-key).
'use strict';

const REFRESH_MS = 5000;
const FLOW_MAX = 600;
const OPERATOR = 'operator';
const MANAGER = 'manager';

const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => (
  { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
const plural = (n, word) => `${n} ${word}${n === 1 ? '' : 's'}`;

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
  const snap = { open: {}, values: {}, focus: null };
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
  if (snap.focus) {
    const el = root.querySelector(`[data-key="${CSS.escape(snap.focus.key)}"]`);
    if (el) {
      el.focus();
      try { if (snap.focus.start != null) el.setSelectionRange(snap.focus.start, snap.focus.end); } catch (_) { /* radio */ }
    }
  }
}

function renderInto(id, data, fn) {
  const key = JSON.stringify(data);
  if (rendered[id] === key) return false;
  rendered[id] = key;
  const el = $(id);
  const snap = snapshot(el);
  el.innerHTML = fn(data);
  restore(el, snap);
  return true;
}

function actionForm(action, label, { cls = '', confirm = '', title = '', kind = '', extra = '' } = {}) {
  return `<form data-async action="${esc(action)}"${confirm ? ` data-confirm="${esc(confirm)}"` : ''}`
    + `${kind ? ` data-kind="${esc(kind)}"` : ''} ${extra}>`
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

const NEGATIVE = new Set(['Stalled', 'Reconciling']);

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
  // At a glance: hide the quiet ones (Stalled/Reconciling when False, UpToDate when shown as a badge).
  return (a.conditions || []).filter((c) => {
    if (NEGATIVE.has(c.type)) return c.status !== 'False';
    if (c.type === 'UpToDate' && a.needs_update) return false;
    return true;
  });
}

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
    const upd = a.needs_update
      ? actionForm(`/api/agents/${encodeURIComponent(a.name)}/update`, 'needs update ↻', {
        cls: 'badge update', kind: 'lifecycle',
        confirm: `Update ${a.name} now? It is rebuilt/restarted at the desired commit.`,
        title: (a.conditions.find((c) => c.type === 'UpToDate') || {}).message || 'deployed commit differs from main',
      })
      : '';
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
      ? `<a href="${esc(a.url)}" target="_blank" rel="noopener" title="open ${name}'s web UI">:${esc(a.web_port)} ↗</a>`
      : '<span class="empty">—</span>';
    return `<tr data-agent="${name}">
      <td><div class="agent-name">${name}${a.name === MANAGER ? '<span class="role">mgr</span>' : ''}</div>
        ${p ? `<div class="agent-sub${p.bad ? ' bad' : ''}">${esc(p.text)}</div>` : ''}</td>
      <td><span class="badge phase-${esc(['running', 'failed', 'stopped', 'absent'].includes(a.phase) ? a.phase : 'unknown')}">${esc(a.phase)}</span> ${upd}</td>
      <td><div class="conds">${shownConditions(a).map(condChip).join('')}</div></td>
      <td>${a.model ? `<span class="chip">${esc(a.model)}</span>` : ''}</td>
      <td>${a.commit_short ? `<span class="commit" title="deployed ${esc(a.commit)}">${esc(a.commit_short)}</span>` : '<span class="empty">never deployed</span>'}${a.desired_short && a.desired_short !== a.commit_short ? ` <span class="dim" title="desired (main)">→ ${esc(a.desired_short)}</span>` : ''}</td>
      <td>${link}</td>
      <td class="right"><div class="lifecycle">${buttons}</div></td>
    </tr>`;
  }).join('');
  return `<table><thead><tr><th>agent</th><th>state</th><th>conditions</th><th>model</th><th>deployed</th><th>ui</th><th></th></tr></thead><tbody>${rows}</tbody></table>`;
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
  renderInto('agents', { agents: s.agents || [], err: errors.status || errors.agents || '' }, renderAgents);
  renderInto('proposals', s.proposals || [], renderProposals);
  renderInto('questions', s.questions || [], renderQuestions);
  renderInto('history', s.history || [], renderHistory);
  if (renderInto('inbox', s.inbox || [], renderInbox)) $('inbox').scrollTop = $('inbox').scrollHeight;
  renderRecipients(s.recipients || []);
  $('agents-count').textContent = (s.agents || []).length || '';
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

let refreshing = null;
let refreshTimer = null;

async function refreshState() {
  if (refreshing) return refreshing;
  refreshing = (async () => {
    try {
      const r = await fetch('/api/state', { headers: { Accept: 'application/json' }, cache: 'no-cache' });
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

async function post(action, body) {
  const r = await fetch(action, {
    method: 'POST',
    headers: { 'Content-Type': 'application/x-www-form-urlencoded', Accept: 'application/json' },
    body,
  });
  const data = await r.json().catch(() => ({}));
  if (!r.ok) {
    const e = data.error || {};
    throw new Error(`${e.message || `${r.status} ${r.statusText}`}${e.field && !(e.message || '').includes(e.field) ? ` (${e.field})` : ''}`);
  }
  return data;
}

async function submitAsync(form, submitter) {
  if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) return;
  const body = new URLSearchParams(new FormData(form));
  if (form.dataset.prompt) {
    const v = window.prompt(form.dataset.prompt, '');
    if (v === null) return;
    if (!v.trim()) { toast('a reason is required', 'err'); return; }
    body.set(form.dataset.promptField || 'note', v.trim());
  }
  if (form.dataset.minOne && !body.has(form.dataset.minOne)) { toast('pick at least one option', 'err'); return; }
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
  const cancel = ev.target.closest('[data-cancel-question]');
  if (cancel) {
    const id = cancel.dataset.cancelQuestion;
    if (!window.confirm(`Cancel question #${id}? The manager gets "[cancelled]" as the answer.`)) return;
    cancel.disabled = true;
    cancel.classList.add('busy');
    try {
      await post(`/api/questions/${id}/cancel`, new URLSearchParams());
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

// ------------------------------------------------------------------ boot

const historyPanel = $('history-panel');
if (localStorage.getItem('hyperhive.history') === 'closed') historyPanel.open = false;
historyPanel.addEventListener('toggle', () => {
  localStorage.setItem('hyperhive.history', historyPanel.open ? 'open' : 'closed');
});

renderNotifyButton();
refreshState();
connectFlow();
setInterval(() => { if (!document.hidden) refreshState(); }, REFRESH_MS);
setInterval(tickClocks, 1000);
document.addEventListener('visibilitychange', () => { if (!document.hidden) refreshState(); });
