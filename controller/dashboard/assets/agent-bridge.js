// The shell of a custom agent UI (spec.frontend.dist; docs/web-ui.md "Custom front-ends").
//
// The custom bundle runs in the sandboxed iframe #hyperhive-ui (an opaque origin: no
// cookie, no access to this page). It talks to its agent through this page with
// window.parent.postMessage; only this agent's api/* and events/stream are reachable:
//
//   → {hyperhive: 1, id, type: "request", method: "GET"|"POST", path: "api/…", body?}
//   ← {hyperhive: 1, id, type: "response", status, body}          (body: parsed JSON or null)
//   → {hyperhive: 1, id, type: "events", after?, backfill?}         (open the event stream)
//   ← {hyperhive: 1, id, type: "event", event, data, lastEventId}  (data: parsed JSON)
//   ← {hyperhive: 1, id, type: "end", status}                      (the stream ended)
//   → {hyperhive: 1, id, type: "close"}                             (close that stream)
"use strict";
(() => {
  const frame = document.getElementById("hyperhive-ui");
  const base = location.pathname.endsWith("/") ? location.pathname : location.pathname + "/";
  const API_PATH = /^api\/[A-Za-z0-9._~-]+(\/[A-Za-z0-9._~-]+)*(\?[\x21-\x7e]*)?$/;
  const streams = new Map();

  const post = (msg) => frame.contentWindow.postMessage({ hyperhive: 1, ...msg }, "*");

  async function request(m) {
    const path = String(m.path || "");
    if (!API_PATH.test(path) || path.split(/[/?]/).includes("..")) {
      post({ id: m.id, type: "response", status: 400,
             body: { error: { code: "invalid", field: "path",
                              message: "a custom UI may call api/… paths only" } } });
      return;
    }
    const method = m.method === "POST" ? "POST" : "GET";
    const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
    if (method === "POST") {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(m.body === undefined ? {} : m.body);
    }
    let status = 0;
    let body = null;
    try {
      const r = await fetch(base + path, init);
      status = r.status;
      try { body = await r.json(); } catch (_) { body = null; }
    } catch (e) {
      body = { error: { code: "unreachable", message: String(e), field: null } };
    }
    post({ id: m.id, type: "response", status, body });
  }

  async function events(m) {
    const q = new URLSearchParams();
    if (Number.isInteger(m.after)) q.set("after", String(m.after));
    if (Number.isInteger(m.backfill)) q.set("backfill", String(m.backfill));
    const ctl = new AbortController();
    streams.set(m.id, ctl);
    let status = 0;
    try {
      const r = await fetch(base + "events/stream" + (q.size ? "?" + q : ""),
                            { credentials: "same-origin", signal: ctl.signal });
      status = r.status;
      if (!r.ok || !r.body) return;
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const frameText = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          let event = "message", data = "", id = null;
          for (const line of frameText.split("\n")) {
            if (line.startsWith("event:")) event = line.slice(6).trim();
            else if (line.startsWith("data:")) data += (data ? "\n" : "") + line.slice(5).trimStart();
            else if (line.startsWith("id:")) id = line.slice(3).trim();
          }
          if (!data) continue;  // comments, retry: and heartbeats
          let parsed = data;
          try { parsed = JSON.parse(data); } catch (_) { /* keep the text */ }
          post({ id: m.id, type: "event", event, data: parsed, lastEventId: id });
        }
      }
    } catch (_) {
      // aborted or the connection dropped: the custom UI reopens with `after`
    } finally {
      streams.delete(m.id);
      post({ id: m.id, type: "end", status });
    }
  }

  window.addEventListener("message", (ev) => {
    if (ev.source !== frame.contentWindow) return;  // only our own sandboxed frame
    const m = ev.data;
    if (!m || m.hyperhive !== 1 || m.id === undefined) return;
    if (m.type === "request") request(m);
    else if (m.type === "events") events(m);
    else if (m.type === "close") streams.get(m.id)?.abort();
  });
})();
