// hyperhive agent UI: live tail of the turn loop (SSE), state row, prompt box with slash commands.
// Vanilla JS, no build step. Every piece of agent/model text goes through textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const el = (tag, cls, text) => {
  const n = document.createElement(tag);
  if (cls) n.className = cls;
  if (text !== undefined && text !== null) n.textContent = String(text);
  return n;
};

const ui = {
  log: $("log"),
  term: $("terminal"),
  pill: $("new-pill"),
  newN: $("new-n"),
  state: $("state-badge"),
  alive: $("alive-badge"),
  model: $("model-chip"),
  ctx: $("ctx-badge"),
  lastTurn: $("last-turn"),
  inboxCounts: $("inbox-counts"),
  cancel: $("cancel-btn"),
  prompt: $("prompt"),
  form: $("prompt-form"),
  older: $("older-row"),
  olderBtn: $("older-btn"),
};

const app = {
  lastId: 0, // newest event id rendered
  firstId: null, // oldest event id rendered (for "load earlier")
  turnState: "offline",
  since: Date.now() / 1000,
  connected: false,
  offlineSince: Date.now() / 1000,
  newCount: 0,
  stickBottom: true,
  tools: new Map(), // tool_use id -> name (to label results)
  source: null,
  stream: null, // {turn, index, node, text}: model text arriving live (text_delta)
  login: null, // the login session snapshot, when one ran
  needsLogin: false,
};

const KINDS = [
  "turn_start", "turn_end", "system_init", "system", "assistant_text", "tool_use", "tool_result",
  "user_text", "result", "note", "unknown", "turn_state_changed", "model_changed",
  "token_usage_changed", "status_changed", "text_delta", "login", "plugin",
];

// ------------------------------------------------------------------ formatting helpers

function fmtMs(ms) {
  if (ms === null || ms === undefined) return "?";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  const m = Math.floor(ms / 60000);
  return `${m}m ${Math.round((ms % 60000) / 1000)}s`;
}

function fmtAge(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

function fmtTokens(n) {
  if (n === null || n === undefined) return "?";
  if (n >= 1000) return `${(n / 1000).toFixed(n >= 100000 ? 0 : 1)}k`;
  return String(n);
}

function fmtTime(ts) {
  const d = typeof ts === "number" ? new Date(ts * 1000) : new Date(ts);
  return d.toLocaleTimeString([], { hour12: false });
}

function firstLine(text, n = 140) {
  const line = String(text || "").split("\n")[0];
  return line.length > n ? line.slice(0, n) + "…" : line;
}

function lineCount(text) {
  return String(text || "").split("\n").length;
}

// ------------------------------------------------------------------ scrolling

function atBottom() {
  const t = ui.term;
  return t.scrollHeight - t.scrollTop - t.clientHeight < 40;
}

function scrollToBottom() {
  ui.term.scrollTop = ui.term.scrollHeight;
  app.newCount = 0;
  ui.pill.hidden = true;
}

ui.term.addEventListener("scroll", () => {
  app.stickBottom = atBottom();
  if (app.stickBottom) {
    app.newCount = 0;
    ui.pill.hidden = true;
  }
});
ui.pill.addEventListener("click", scrollToBottom);

function append(node, live) {
  ui.log.appendChild(node);
  if (app.stickBottom) {
    ui.term.scrollTop = ui.term.scrollHeight;
  } else if (live) {
    app.newCount += 1;
    ui.newN.textContent = String(app.newCount);
    ui.pill.hidden = false;
  }
}

// ------------------------------------------------------------------ event rendering

function row(cls, text) {
  return el("div", "row " + (cls || ""), text);
}

function collapsible(summaryText, bodyNode, cls) {
  const d = el("details", cls || "");
  d.appendChild(el("summary", "", summaryText));
  d.appendChild(bodyNode);
  return d;
}

function pre(text, cls) {
  return el("pre", cls || "", text);
}

function diffBlock(removed, added) {
  const box = el("div", "diff");
  for (const l of removed) box.appendChild(el("span", "del", "- " + l));
  for (const l of added) box.appendChild(el("span", "add", "+ " + l));
  return box;
}

function splitLines(s) {
  const text = String(s ?? "");
  if (text === "") return [];
  const lines = text.split("\n");
  if (lines[lines.length - 1] === "") lines.pop();
  return lines;
}

// paths under the agent's cwd (its state dir) are shown relative to it
function relPath(path) {
  const p = String(path || "?");
  return app.cwd && p.startsWith(app.cwd + "/") ? p.slice(app.cwd.length + 1) : p;
}

// Write / Edit / MultiEdit → collapsible diff; null for other tools.
function renderFileWriteEdit(name, input) {
  const path = relPath(input.file_path || input.path);
  if (name === "Write") {
    const added = splitLines(input.content);
    return collapsible(`→ Write ${path} · +${added.length}`, diffBlock([], added), "tool-row tool");
  }
  if (name === "Edit") {
    const del = splitLines(input.old_string);
    const add = splitLines(input.new_string);
    const all = input.replace_all ? " · all" : "";
    return collapsible(`→ Edit ${path} · -${del.length} +${add.length}${all}`, diffBlock(del, add), "tool-row tool");
  }
  if (name === "MultiEdit" && Array.isArray(input.edits)) {
    const box = el("div");
    let d = 0, a = 0;
    for (const e of input.edits) {
      const del = splitLines(e.old_string), add = splitLines(e.new_string);
      d += del.length; a += add.length;
      box.appendChild(diffBlock(del, add));
    }
    return collapsible(`→ MultiEdit ${path} · ${input.edits.length} edits · -${d} +${a}`, box, "tool-row tool");
  }
  return null;
}

function shortName(name) {
  return name.startsWith("mcp__hyperhive__") ? "hyperhive." + name.slice(16) : name;
}

function fmtToolUse(name, input) {
  const i = input || {};
  switch (name) {
    case "Bash": return `$ ${i.command || ""}` + (i.description ? `   # ${i.description}` : "");
    case "Read": return `→ Read ${relPath(i.file_path)}` + (i.offset ? ` from line ${i.offset}` : "") + (i.limit ? ` (${i.limit} lines)` : "");
    case "Glob": return `→ Glob ${i.pattern || ""}` + (i.path ? ` in ${i.path}` : "");
    case "Grep": return `→ Grep ${JSON.stringify(i.pattern || "")}` + (i.path ? ` in ${i.path}` : "") + (i.glob ? ` (${i.glob})` : "");
    case "mcp__hyperhive__send": return `✉ send → ${i.to}: ${i.body}`;
    case "mcp__hyperhive__recv": return `✉ recv` + (i.wait_seconds ? ` (wait up to ${i.wait_seconds} s)` : " (peek)");
    case "mcp__hyperhive__ask": return `✉ ask → ${i.to}: ${i.question}`;
    case "mcp__hyperhive__answer": return `✉ answer thread ${i.thread}: ${i.body}`;
    case "mcp__hyperhive__remind": return `⏰ remind in ${i.after_seconds} s: ${i.body}`;
    default: {
      const short = shortName(name);
      const args = JSON.stringify(i);
      return `→ ${short}(${args === "{}" ? "" : args.length > 300 ? args.slice(0, 300) + "…" : args})`;
    }
  }
}

// ------------------------------------------------------------------ live text (text_delta)

function streamText(turn, index, offset, text) {
  let st = app.stream;
  if (!st || st.turn !== turn || st.index !== index) {
    endStream(false);
    const node = row("say streaming", "");
    st = app.stream = { turn, index, node, text: "" };
    append(node, true);
  }
  // offset = length of the block's text before this piece: skip what we already have
  if (offset < st.text.length) text = text.slice(st.text.length - offset);
  if (!text) return;
  st.text += text;
  st.node.textContent = st.text;
  if (app.stickBottom) ui.term.scrollTop = ui.term.scrollHeight;
}

// the complete block arrived (replaces the live one) or the turn ended (keep what came, marked)
function endStream(cutOff) {
  const st = app.stream;
  app.stream = null;
  if (!st) return;
  if (cutOff) {
    st.node.classList.remove("streaming");
    st.node.classList.add("cut");
  } else {
    st.node.remove();
  }
}

function renderEvent(ev) {
  const d = ev.data || {};
  switch (ev.kind) {
    case "turn_start": {
      const box = el("div");
      const m = d.message || {};
      const head = el("div", "turn-head", `━━ turn ${ev.turn} `);
      const kind = m.kind && m.kind !== "message" ? ` (${m.kind}${m.thread ? " · thread " + m.thread : ""})` : "";
      head.appendChild(el("span", "meta",
        `· ${fmtTime(ev.ts)} · #${m.id} from ${m.from}${kind} · ${d.model}${d.fresh_session ? " · fresh session" : ""}`));
      box.appendChild(head);
      box.appendChild(el("div", "wake-body", m.body));
      return box;
    }
    case "system_init": {
      if (d.cwd) app.cwd = d.cwd;
      const servers = (d.mcp_servers || []).map((s) => `${s.name} ${s.status === "connected" ? "✓" : s.status}`).join(", ");
      return row("dim", `  session ${String(d.session_id || "").slice(0, 8)} · ${d.model} · claude ${d.version} · mcp: ${servers || "none"}`);
    }
    case "system": {
      if (d.subtype === "status") {
        if (d.data && d.data.status === "compacting") return row("warn", "⟳ compacting the session…");
        if (d.data && d.data.compact_result) return row(d.data.compact_result === "success" ? "ok" : "err", `⟳ compaction ${d.data.compact_result}${d.data.compact_error ? ": " + d.data.compact_error : ""}`);
        return null;
      }
      if (d.subtype === "compact_boundary") {
        const md = (d.data && d.data.compact_metadata) || {};
        return row("dim", `── compacted (${md.trigger || "?"}): ${fmtTokens(md.pre_tokens)} → ${fmtTokens(md.post_tokens)} tokens ──`);
      }
      return row("dim", `  system ${d.subtype}`);
    }
    case "assistant_text":
      endStream(false);
      if (!d.text) return null;
      return row("say", d.text);
    case "tool_use": {
      app.tools.set(d.id, d.name);
      const fw = renderFileWriteEdit(d.name, d.input || {});
      if (fw) return fw;
      const cls = d.name.startsWith("mcp__hyperhive__") ? "tool tool-send" : "tool";
      return row(cls, fmtToolUse(d.name, d.input));
    }
    case "tool_result": {
      const name = shortName(app.tools.get(d.tool_use_id) || "tool");
      const text = d.text || "";
      const cls = "tres" + (d.is_error ? " err" : "");
      if (lineCount(text) <= 1) {
        const shown = app.cwd ? text.split(app.cwd + "/").join("") : text;
        return row(cls, `↳ ${name}${d.is_error ? " error" : ""}: ${firstLine(shown, 160) || "(empty)"}`);
      }
      const body = pre(text + (d.truncated ? "\n… (cut)" : ""));
      return collapsible(`↳ ${name}: ${firstLine(text, 100)} (${lineCount(text)} lines)`, body, cls);
    }
    case "user_text":
      if (String(d.text).startsWith("<local-command-stdout>")) return null;
      if (d.synthetic) return collapsible("  compaction summary", pre(d.text), "dim");
      return row("dim", d.text);
    case "result": {
      const u = d.usage || {};
      const cost = d.cost_usd ? ` · $${Number(d.cost_usd).toFixed(4)}` : "";
      if (d.is_error) {
        return row("err", `✗ ${d.terminal_reason || "error"}: ${firstLine(d.text, 300)}`);
      }
      return row("ok", `✓ done · ${fmtMs(d.duration_ms)} · ${fmtTokens(u.input_tokens)} in / ${fmtTokens(u.output_tokens)} out · cache ${fmtTokens(u.cache_read_input_tokens)} read / ${fmtTokens(u.cache_creation_input_tokens)} write${cost}`);
    }
    case "turn_end": {
      endStream(true);
      const cls = d.result_kind === "ok" ? "turn-end" : "turn-end err";
      const tools = d.tool_calls ? ` · ${d.tool_calls} tool call${d.tool_calls === 1 ? "" : "s"}` : "";
      const comp = d.compactions ? ` · ${d.compactions} compaction` : "";
      return row(cls, `━━ end turn ${ev.turn} · ${d.result_kind} · ${fmtMs(d.duration_ms)}${tools}${comp}${d.note ? " · " + d.note : ""}`);
    }
    case "note": {
      const r = row("note-" + (d.level || "info"), `• ${d.text}`);
      if (Array.isArray(d.stderr) && d.stderr.length) {
        const box = el("div");
        box.appendChild(r);
        box.appendChild(collapsible("  stderr", pre(d.stderr.join("\n")), "dim"));
        return box;
      }
      return r;
    }
    case "model_changed":
      return row("dim", `• model → ${d.model} (${d.source})`);
    case "login": {
      const what = {
        starting: "login: starting claude auth login…",
        waiting_code: "login: open the link in the login panel, sign in, paste the code",
        exchanging: "login: code sent, finishing…",
        succeeded: "login: done — claude is logged in",
        failed: `login failed: ${d.message}`,
        cancelled: `login cancelled${d.message ? ": " + d.message : ""}`,
      }[d.state] || `login: ${d.state}`;
      return row(d.state === "failed" ? "note-error" : d.state === "succeeded" ? "ok" : "note-info", `• ${what}`);
    }
    case "plugin": {
      const secs = d.seconds ? ` · ${Number(d.seconds).toFixed(1)} s` : "";
      if (d.ok) return row("dim", `⧉ ${d.kind} ${d.spec}: ${d.action}${secs}`);
      const box = el("div");
      box.appendChild(row("note-error", `⧉ ${d.kind} ${d.spec}: failed${secs}`));
      box.appendChild(collapsible("  output", pre(d.detail || ""), "dim"));
      return box;
    }
    case "unknown":
      return collapsible(`  unparsed line (${d.reason})`, pre(d.raw, "raw"), "dim");
    default:
      return null; // state events update the header only
  }
}

// ------------------------------------------------------------------ header state

function setTurnState(state, since) {
  app.turnState = state;
  if (since) app.since = since;
  renderBadge();
  ui.cancel.hidden = !(state === "thinking" || state === "compacting");
}

function renderBadge() {
  const now = Date.now() / 1000;
  if (!app.connected) {
    ui.state.className = "badge state-offline";
    ui.state.textContent = `offline ${fmtAge(now - app.offlineSince)}`;
    ui.state.title = "the live stream is disconnected; reconnecting…";
    return;
  }
  const s = app.turnState;
  ui.state.className = `badge state-${s}`;
  ui.state.textContent = `${s} ${fmtAge(now - app.since)}`;
  ui.state.title = {
    idle: "waiting for the next inbox message",
    thinking: "a claude turn is running",
    compacting: "compacting the session",
  }[s] || s;
}
setInterval(renderBadge, 1000);

function setModel(model, override) {
  ui.model.textContent = `model · ${model}`;
  ui.model.title = override
    ? `operator override (deployed: ${override}) · /model NAME to change, /model default to reset`
    : "the deployed model · /model NAME to override it";
}

function setUsage(u) {
  if (!u) return;
  ui.ctx.hidden = false;
  const ctx = u.context_tokens ?? (u.input_tokens + u.cache_read_input_tokens + u.cache_creation_input_tokens);
  ui.ctx.textContent = `ctx · ${fmtTokens(ctx)} tokens`;
  ui.ctx.title = `context of the last request: input ${u.input_tokens} · cache read ${u.cache_read_input_tokens} · cache write ${u.cache_creation_input_tokens} (output ${u.output_tokens})`;
}

function setLastTurn(ms) {
  if (ms === null || ms === undefined) return;
  ui.lastTurn.hidden = false;
  ui.lastTurn.textContent = `last turn ${fmtMs(ms)}`;
  ui.lastTurn.title = `${ms} ms`;
}

function setStatus(status, detail, inbox) {
  if (status) {
    const show = status !== "online";
    ui.alive.hidden = !show;
    ui.alive.className = `badge alive-${status}`;
    ui.alive.textContent = status.replace("_", " ");
    ui.alive.title = detail || "";
    app.needsLogin = status === "needs_login";
    if (app.needsLogin) $("login-detail").textContent = detail || "";
    renderLogin();
  }
  if (inbox) {
    ui.inboxCounts.hidden = false;
    ui.inboxCounts.textContent = `${inbox.unread} unread · ${inbox.open_threads} threads · ${inbox.pending_reminders} reminders`;
  }
}

function renderInbox(msgs) {
  const box = $("inbox-rows");
  box.replaceChildren();
  if (!Array.isArray(msgs) || msgs.length === 0) {
    $("inbox").hidden = true;
    return;
  }
  $("inbox").hidden = false;
  $("inbox-n").textContent = String(msgs.length);
  for (const m of msgs) {
    box.appendChild(el("span", "ts", fmtTime(m.sent_at)));
    box.appendChild(el("span", "from", `${m.from} → ${m.to}${m.kind !== "message" ? " (" + m.kind + ")" : ""}`));
    box.appendChild(el("span", "body", m.body));
  }
}

// spec.frontend.extraFiles: links to the agent's extra pages (served sandboxed by the
// dashboard from the meta repo; relative, so they stay under /agents/<name>/)
function renderExtraLinks(extra) {
  const box = $("extra-links");
  const want = extra.map((e) => `${e.key}:${e.target}`).join(" ");
  if (box.dataset.shown === want) return;
  box.dataset.shown = want;
  box.replaceChildren();
  for (const e of extra) {
    const a = el("a", "link", `${e.key} ↗`);
    a.href = `${e.target}/`;
    a.target = "_blank";
    a.rel = "noopener";
    box.appendChild(a);
  }
  box.hidden = extra.length === 0;
}

async function refreshState() {
  try {
    const r = await fetch("api/state");
    const s = await r.json();
    document.title = `${s.agent} · hyperhive`;
    $("agent-name").textContent = s.agent;
    $("flavor").textContent = s.flavor;
    if (s.dashboard_url) {
      const a = $("dashboard-link");
      a.href = s.dashboard_url;
      a.hidden = false;
    }
    renderExtraLinks(s.extra_files || []);
    setModel(s.model, s.model_override ? s.settings_model : null);
    setUsage(s.usage);
    setLastTurn(s.last_turn_ms);
    if (s.login) {
      app.login = s.login.session;
      app.loginSource = s.login.source + (s.login.stored_hint ? ` ${s.login.stored_hint}` : "");
    }
    setStatus(s.needs_login ? "needs_login" : s.status, s.status_detail, s.inbox_status);
    setTurnState(s.turn_state, s.turn_state_since);
    renderInbox(s.inbox);
  } catch (e) {
    /* the stream's error handler shows offline */
  }
}

// ------------------------------------------------------------------ the stream

function handle(ev, live) {
  if (ev.kind === "text_delta") { // live only: no id
    if (live) streamText(ev.turn, ev.data.index, ev.data.offset, ev.data.text);
    return;
  }
  if (ev.id <= app.lastId) return; // already shown (reconnect overlap)
  app.lastId = ev.id;
  if (app.firstId === null) app.firstId = ev.id;
  const d = ev.data || {};
  switch (ev.kind) {
    case "turn_state_changed": setTurnState(d.state, d.since); break;
    case "model_changed": setModel(d.model, null); if (live) refreshState(); break;
    case "token_usage_changed": setUsage(d); break;
    case "status_changed": setStatus(d.status, d.detail, d.inbox); break;
    case "turn_end": setLastTurn(d.duration_ms); if (live) refreshState(); break;
    case "login": app.login = d; renderLogin(); if (live && d.state === "succeeded") refreshState(); break;
  }
  const node = renderEvent(ev);
  if (node) append(node, live);
}

function connect() {
  const src = new EventSource("events/stream");
  app.source = src;
  let live = false;
  for (const kind of KINDS) {
    src.addEventListener(kind, (msg) => {
      try {
        handle(JSON.parse(msg.data), live);
      } catch (e) {
        console.error("bad event", e, msg.data);
      }
    });
  }
  src.addEventListener("ready", (msg) => {
    live = true;
    app.connected = true;
    try {
      const r = JSON.parse(msg.data);
      if (r.state) {
        setTurnState(r.state.turn_state, r.state.turn_state_since);
        setStatus(r.state.status, r.state.status_detail, r.state.inbox_status);
        const p = r.state.partial;
        if (p && p.text && !app.stream) streamText(p.turn, p.index, 0, p.text);
      }
    } catch (e) { /* ignore */ }
    ui.older.hidden = app.firstId === null || app.firstId <= 1;
    renderBadge();
    if (app.stickBottom) scrollToBottom();
  });
  src.onerror = () => {
    if (app.connected) app.offlineSince = Date.now() / 1000;
    app.connected = false;
    live = false;
    renderBadge();
  };
}

ui.olderBtn.addEventListener("click", async () => {
  if (app.firstId === null) return;
  ui.olderBtn.disabled = true;
  try {
    const r = await fetch(`api/history?before=${app.firstId}&limit=300`);
    const body = await r.json();
    const frag = document.createDocumentFragment();
    const height = ui.term.scrollHeight;
    for (const ev of body.events) {
      if (ev.kind === "tool_use") app.tools.set(ev.data.id, ev.data.name);
      const node = renderEvent(ev);
      if (node) frag.appendChild(node);
    }
    ui.log.insertBefore(frag, ui.log.firstChild);
    ui.term.scrollTop += ui.term.scrollHeight - height;
    if (body.events.length) app.firstId = body.events[0].id;
    ui.older.hidden = !body.has_more;
  } finally {
    ui.olderBtn.disabled = false;
  }
});

// ------------------------------------------------------------------ prompt + slash commands

function local(text, isErr) {
  append(row("local" + (isErr ? " err" : ""), text), true);
  scrollToBottom();
}

async function post(path, body) {
  const r = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body || {}),
  });
  let data = null;
  try { data = await r.json(); } catch (e) { /* empty */ }
  if (!r.ok) {
    const msg = (data && data.error && data.error.message) || `${r.status} ${r.statusText}`;
    throw new Error(msg);
  }
  return data;
}

const HELP = [
  "/help            this list",
  "/login           log claude in (sign in, or paste an API key / long-lived token)",
  "/model           show the model · /model NAME switches the next turns (e.g. sonnet, opus, haiku)",
  "/model default   back to the deployed model",
  "/compact         compact the session now (or after the running turn)",
  "/new             the next turn starts a fresh session (no --continue)",
  "/cancel          terminate the running turn",
  "anything else    is sent to the agent as a message from 'operator'",
];

async function runCommand(text) {
  const [cmd, ...rest] = text.trim().split(/\s+/);
  const arg = rest.join(" ");
  switch (cmd) {
    case "/help":
      local(HELP.join("\n"));
      return;
    case "/model": {
      if (!arg) {
        local(ui.model.textContent);
        return;
      }
      const r = await post("api/model", { model: arg === "default" ? "" : arg });
      setModel(r.model, r.override ? r.settings_model : null);
      local(`model → ${r.model}${r.override ? " from the next turn" : " (the deployed default)"}`);
      return;
    }
    case "/compact": {
      const r = await post("api/compact");
      local(r.result === "queued" ? "compaction queued after the running turn" : "compacting…");
      return;
    }
    case "/new":
      await post("api/new");
      local("the next turn starts a fresh session");
      return;
    case "/cancel":
      await post("api/cancel");
      local("turn cancelled");
      return;
    case "/login":
      app.loginOpen = true;
      app.loginDismissed = false;
      renderLogin();
      $("login-panel").scrollIntoView({ block: "nearest" });
      local("the login panel is open above");
      return;
    default:
      local(`unknown command ${cmd} — /help lists them`, true);
  }
}

async function submit() {
  const text = ui.prompt.value;
  if (!text.trim()) return;
  ui.prompt.disabled = true;
  try {
    if (text.trim().startsWith("/")) {
      await runCommand(text);
    } else {
      const r = await post("api/send", { body: text });
      local(`» sent to ${$("agent-name").textContent} as message #${r.id}`);
    }
    ui.prompt.value = "";
  } catch (e) {
    local(`✗ ${e.message}`, true);
  } finally {
    ui.prompt.disabled = false;
    ui.prompt.focus();
  }
}

ui.form.addEventListener("submit", (e) => {
  e.preventDefault();
  submit();
});
ui.prompt.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    submit();
  }
});
ui.cancel.addEventListener("click", async () => {
  try {
    await post("api/cancel");
    local("turn cancelled");
  } catch (e) {
    local(`✗ ${e.message}`, true);
  }
});

// ------------------------------------------------------------------ login panel

function renderLogin() {
  const panel = $("login-panel");
  const s = app.login;
  const running = s && ["starting", "waiting_code", "exchanging"].includes(s.state);
  panel.hidden = app.loginDismissed || !(app.needsLogin || app.loginOpen || running);
  ui.alive.classList.toggle("clickable", app.needsLogin);
  if (panel.hidden) return;
  $("login-title").textContent = app.needsLogin
    ? "claude needs a login — turns wait until it has credentials"
    : `claude credentials: ${app.loginSource || "?"}`;
  $("login-detail").hidden = !app.needsLogin || !!running;
  $("login-start").hidden = !!running;
  $("login-cancel").hidden = !running;
  const waiting = s && s.state === "waiting_code";
  $("login-step").hidden = !running;
  $("login-code-form").hidden = !waiting;
  const link = $("login-url");
  if (s && s.url && running) {
    link.href = s.url;
    link.textContent = s.url.length > 90 ? s.url.slice(0, 90) + "…" : s.url;
    link.hidden = false;
  } else {
    link.hidden = true;
  }
  const msg = $("login-msg");
  msg.textContent = s ? `${s.state.replace("_", " ")}: ${s.message}` : "";
  msg.className = "login-msg " + (s && s.state === "failed" ? "err" : s && s.state === "succeeded" ? "ok" : "dim");
}

async function loginAction(path, body, okText) {
  try {
    const r = await post(path, body);
    if (r && r.login) { app.login = r.login; renderLogin(); }
    if (okText) local(okText(r));
    return r;
  } catch (e) {
    local(`✗ ${e.message}`, true);
    return null;
  }
}

for (const b of document.querySelectorAll("[data-login-method]")) {
  b.addEventListener("click", () => loginAction("api/login/start", { method: b.dataset.loginMethod }));
}
$("login-cancel").addEventListener("click", () => loginAction("api/login/cancel", {}, () => "login cancelled"));
$("login-code-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const input = $("login-code");
  const r = await loginAction("api/login/code", { code: input.value });
  if (r) input.value = "";
});
$("login-key-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const input = $("login-key");
  const kind = $("login-kind").value;
  const r = await loginAction("api/login/key", { kind, value: input.value },
    (x) => `stored the ${kind.replace("_", " ")} · claude now uses: ${x.source}`);
  // the value itself never comes back: the state shows it masked (stored_hint)
  if (r) {
    input.value = "";
    app.loginOpen = false;
    refreshState();
  }
});
$("login-close").addEventListener("click", () => {
  app.loginOpen = false;
  app.loginDismissed = true; // the "needs login" badge or /login brings it back
  renderLogin();
});
ui.alive.addEventListener("click", () => {
  if (!app.needsLogin) return;
  app.loginDismissed = false;
  renderLogin();
});

refreshState();
connect();
