// The run pages of LLM-Orchestrator: the list of runs (/ui) and one run (/ui/runs/<id>).
// Served as static files; every piece of data comes from the API with the bearer token the
// page was given (the `#token=` fragment of its link, or the sign-in form), kept in this tab's
// sessionStorage. Everything from the API is inserted as text, never as HTML.
"use strict";

const TOKEN_KEY = "llmo.token";
const LIVE = new Set(["pending", "running"]);
const POLL_MS = 1500;
const main = document.getElementById("main");

function takeTokenFromFragment() {
  const m = location.hash.match(/(?:^#|&)token=([^&]+)/);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
}

class Unauthorized extends Error {}

async function api(path) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = "Bearer " + token;
  const r = await fetch(path, { headers, cache: "no-store" });
  if (r.status === 401) throw new Unauthorized(await errorText(r));
  if (!r.ok) throw new Error(r.status + ": " + (await errorText(r)));
  return r.json();
}

async function errorText(r) {
  try { const b = await r.json(); return b.error || JSON.stringify(b); } catch (_) { return r.statusText; }
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, ...children) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== undefined && v !== null) e.setAttribute(k, v);
  for (const c of children) e.append(c instanceof Node ? c : String(c));
  return e;
}

function badge(status) { return el("span", { class: "badge s-" + status, "data-status": status }, status.replace("_", " ")); }
function when(ms) { return ms ? new Date(ms).toLocaleString() : "—"; }
function duration(a, b) {
  if (!a) return "—";
  const s = ((b || Date.now()) - a) / 1000;
  return s < 60 ? s.toFixed(s < 10 ? 2 : 1) + " s" : s < 3600 ? (s / 60).toFixed(1) + " min" : (s / 3600).toFixed(1) + " h";
}
function usd(v) { return "$" + (v || 0).toFixed(v && v < 0.01 ? 6 : 4); }

function showLogin(message) {
  main.replaceChildren(document.getElementById("login").content.cloneNode(true));
  document.getElementById("login-error").textContent = message || "";
  document.getElementById("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value.trim());
    route();
  });
}

// ---- the list of runs ----

async function listPage() {
  const q = new URLSearchParams(location.search);
  const workflow = el("input", { id: "f-workflow", placeholder: "workflow", value: q.get("workflow") || "" });
  const status = el("select", { id: "f-status" }, el("option", { value: "" }, "any status"),
    ...["pending", "running", "succeeded", "failed", "cancelled", "timed_out"].map((s) => el("option", { value: s }, s)));
  status.value = q.get("status") || "";
  const apply = () => {
    const p = new URLSearchParams();
    if (workflow.value.trim()) p.set("workflow", workflow.value.trim());
    if (status.value) p.set("status", status.value);
    history.pushState(null, "", "/ui" + (p.toString() ? "?" + p : ""));
    route();
  };
  const body = el("tbody", { id: "runs" });
  const more = el("button", { id: "more", disabled: "" }, "Older runs");
  main.replaceChildren(
    el("form", { class: "filters", onsubmit: (e) => { e.preventDefault(); apply(); } },
      workflow, status, el("button", { type: "submit" }, "Filter")),
    el("table", {}, el("thead", {}, el("tr", {}, ...["Run", "Workflow", "Status", "Started", "Cost", "Tokens"].map((h) => el("th", {}, h)))), body),
    el("p", {}, more));
  let cursor = null;
  const load = async () => {
    const p = new URLSearchParams();
    if (q.get("workflow")) p.set("workflow", q.get("workflow"));
    if (q.get("status")) p.set("status", q.get("status"));
    p.set("limit", "50");
    if (cursor) p.set("cursor", cursor);
    const page = await api("/runs?" + p);
    for (const r of page.runs) {
      body.append(el("tr", { "data-run": r.run_id },
        el("td", {}, el("a", { href: "/ui/runs/" + encodeURIComponent(r.run_id) }, r.run_id)),
        el("td", {}, r.workflow), el("td", {}, badge(r.status)), el("td", {}, when(r.started_at)),
        el("td", { class: "num" }, usd(r.cost_usd)), el("td", { class: "num" }, r.tokens ?? 0)));
    }
    if (!page.runs.length && !cursor) body.append(el("tr", {}, el("td", { colspan: 6, class: "muted" }, "No runs.")));
    cursor = page.next || null;
    if (cursor) more.removeAttribute("disabled"); else more.setAttribute("disabled", "");
  };
  more.addEventListener("click", () => load().catch(fail));
  await load();
}

// ---- one run ----

const BOX_W = 180, BOX_H = 46, GAP_X = 70, GAP_Y = 22, PAD = 20;

function layout(tasks) {
  const columns = [];
  for (const t of tasks) (columns[t.level] ||= []).push(t);
  const pos = new Map();
  columns.forEach((col, c) => col.forEach((t, r) => pos.set(t.id, { x: PAD + c * (BOX_W + GAP_X), y: PAD + r * (BOX_H + GAP_Y) })));
  const width = PAD * 2 + columns.length * (BOX_W + GAP_X) - GAP_X;
  const height = PAD * 2 + Math.max(...columns.map((c) => c.length)) * (BOX_H + GAP_Y) - GAP_Y;
  return { pos, width, height };
}

function drawGraph(run, selected, onSelect) {
  const { pos, width, height } = layout(run.tasks);
  const root = svg("svg", { id: "dag", width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "task graph" });
  const edge = (from, to, cls) => {
    const a = pos.get(from), b = pos.get(to);
    if (!a || !b) return;
    const x1 = a.x + BOX_W, y1 = a.y + BOX_H / 2, x2 = b.x, y2 = b.y + BOX_H / 2, mx = (x1 + x2) / 2;
    root.append(svg("path", { class: cls, d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`, "data-from": from, "data-to": to }));
  };
  for (const t of run.tasks) {
    for (const n of t.needs) edge(n, t.id, "edge");
    for (const n of t.fallback_for || []) edge(n, t.id, "edge fallback");
  }
  for (const t of run.tasks) {
    const p = pos.get(t.id);
    const sub = [t.type, t.items != null ? t.items + " items" : null, t.attempts > 1 ? t.attempts + " attempts" : null]
      .filter(Boolean).join(" · ");
    const g = svg("g", { class: "node s-" + t.status + (t.id === selected ? " selected" : ""), transform: `translate(${p.x},${p.y})`,
      "data-task": t.id, "data-status": t.status, tabindex: 0 },
      svg("title", {}, `${t.id}: ${t.status}`),
      svg("rect", { width: BOX_W, height: BOX_H }),
      svg("rect", { class: "bar", width: 6, height: BOX_H }),
      svg("text", { x: 14, y: 19 }, t.id.length > 22 ? t.id.slice(0, 21) + "…" : t.id),
      svg("text", { class: "sub", x: 14, y: 36 }, sub));
    g.addEventListener("click", () => onSelect(t.id));
    g.addEventListener("keydown", (e) => { if (e.key === "Enter") onSelect(t.id); });
    root.append(g);
  }
  return root;
}

function taskPanel(run, id) {
  const t = run.tasks.find((x) => x.id === id);
  if (!t) return el("div", { class: "panel", id: "task-panel" }, el("p", { class: "muted" }, "Click a task to see its attempts, cost and output."));
  const rows = [["status", badge(t.status)], ["type", t.type], ["attempts", t.attempts], ["items", t.items],
    ["started", when(t.started_at)], ["duration", t.started_at ? duration(t.started_at, t.ended_at) : "—"],
    ["cost", usd(t.cost_usd)], ["tokens", t.tokens], ["needs", t.needs.join(", ") || "—"], ["reason", t.reason]];
  const dl = el("dl", {});
  for (const [k, v] of rows) if (v !== null && v !== undefined) dl.append(el("dt", {}, k), el("dd", {}, v));
  return el("div", { class: "panel", id: "task-panel", "data-task": t.id },
    ...[el("h2", {}, t.id), dl,
    t.error ? el("div", {}, el("strong", {}, "Error"), el("pre", { class: "error", id: "task-error" }, t.error)) : null,
    t.children && t.children.runs.length ? childList(t.children) : null,
    Array.isArray(t.turns) && t.turns.length ? turnList(t.turns) : null,
    t.output !== null && t.output !== undefined ? el("div", {}, el("strong", {}, "Output"), el("pre", { id: "task-output" }, JSON.stringify(t.output, null, 2))) : null,
    ].filter(Boolean));
}

// An agent's turns, each with its tool calls (arguments, result or error, duration, tokens).
function turnList(turns) {
  const took = (x) => x.started_at && x.ended_at ? duration(x.started_at, x.ended_at) : "";
  const call = (c) => el("li", { class: "call", "data-call": c.name, "data-status": c.status },
    el("code", {}, `${c.name}(${c.arguments})`), " ", badge(c.status),
    c.attempts > 1 ? ` ${c.attempts} attempts` : "", " ", took(c),
    c.tokens ? ` · ${c.tokens} tokens · ${usd(c.cost_usd)}` : "",
    c.status === "awaiting_approval"
      ? el("p", { class: "muted awaiting" }, `waits for approval: ${c.prompt || "run it?"}`,
        c.timeout_at ? ` (until ${when(c.timeout_at)})` : "", " · llmo approve / reject, or its link")
      : c.status === "awaiting_callback"
      ? el("p", { class: "muted awaiting" }, "sent; waits for its callback",
        c.timeout_at ? ` (until ${when(c.timeout_at)})` : "", c.beat_at ? ` · last heartbeat ${when(c.beat_at)}` : "")
      : null,
    c.approval ? el("p", { class: "muted" }, c.approval.timed_out ? "no answer in time"
      : `${c.approval.approved ? "approved" : "rejected"} by ${c.approval.by}${c.approval.comment ? ": " + c.approval.comment : ""}`) : null,
    c.status === "awaiting_approval" || c.status === "awaiting_callback" ? null : el("pre", { class: c.error ? "error" : "" }, c.error || c.result || ""));
  return el("div", { id: "task-turns" }, el("strong", {}, `Turns (${turns.filter((t) => !t.asking).length})`),
    el("ol", {}, ...turns.map((t) => el("li", { class: "turn", "data-turn": t.turn },
      t.asking ? el("span", { class: "muted" }, "asking the model…")
        : el("span", {}, `${t.model || "model"} · ${t.tokens} tokens · ${usd(t.cost_usd)} · ${took(t)}`),
      t.text ? el("pre", {}, t.text) : null,
      t.calls && t.calls.length ? el("ul", {}, ...t.calls.map(call)) : null))));
}

function runLink(runId) { return el("a", { href: "/ui/runs/" + encodeURIComponent(runId) }, runId); }

// The child runs of a `workflow` task: one per attempt of each item, linked.
function childList(children) {
  const more = children.total - children.runs.length;
  return el("div", { id: "task-children" }, el("strong", {}, `Child runs (${children.total})`),
    el("ul", {}, ...children.runs.map((c) => el("li", { "data-child": c.run_id },
      runLink(c.run_id), " ", badge(c.status),
      c.item !== null && c.item !== undefined ? ` item ${c.item}` : "", c.attempt > 1 ? ` attempt ${c.attempt}` : ""))),
    more > 0 ? el("p", { class: "muted" }, `and ${more} more`) : null);
}

async function runPage(id) {
  let selected = null, run = null, timer = null;
  const render = () => {
    const facts = [["workflow", run.workflow], ["started", when(run.started_at)], ["duration", duration(run.started_at, run.ended_at)],
      ["cost", usd(run.cost_usd)], ["tokens", run.tokens], ["version", run.version]];
    if (run.parent) facts.push(["parent", el("span", { id: "run-parent" }, runLink(run.parent.run_id), ` (${run.parent.task_id})`)]);
    main.replaceChildren(...[
      el("div", { class: "run-head" }, el("h1", {}, run.run_id),
        el("span", { id: "run-status", "data-status": run.status }, badge(run.status)),
        el("div", { class: "facts" }, ...facts.map(([k, v]) => el("div", {}, el("span", {}, k), v)))),
      run.error ? el("pre", { class: "error", id: "run-error" }, run.error) : null,
      el("div", { class: "legend" }, ...["pending", "running", "waiting", "retry_wait", "succeeded", "failed", "skipped", "cancelled"].map(badge)),
      el("div", { class: "layout" },
        el("div", { class: "graph" }, drawGraph(run, selected, (t) => { selected = t; render(); })),
        taskPanel(run, selected)),
      run.outputs !== null && run.outputs !== undefined && !LIVE.has(run.status)
        ? el("div", {}, el("h3", {}, "Outputs"), el("pre", { id: "run-outputs" }, JSON.stringify(run.outputs, null, 2))) : null,
    ].filter(Boolean));
  };
  let gone = false, streaming = false;
  const refresh = async () => {
    run = await api("/runs/" + encodeURIComponent(id));
    document.title = `${run.run_id} · ${run.status}`;
    render();
  };
  const poll = async () => {
    try {
      await refresh();
      if (LIVE.has(run.status) && !gone && !streaming) timer = setTimeout(poll, POLL_MS);
    } catch (e) { fail(e); }
  };
  window.addEventListener("popstate", () => { gone = true; clearTimeout(timer); }, { once: true });
  await poll();
  if (run && LIVE.has(run.status)) follow(id, () => gone, (on) => { streaming = on; document.body.dataset.live = on ? "stream" : "poll"; if (!on) { clearTimeout(timer); poll(); } }, refresh);
}

// Follows a run's event stream (GET /runs/{id}/events, server-sent events read through fetch,
// which sends the bearer token): each event refreshes the page (at most one refresh in flight),
// a dropped stream reconnects with the last event's id, and where the server does not stream
// (or after three failed tries) the page goes back to polling.
async function follow(id, gone, live, refresh) {
  let last = null, failures = 0, busy = false, again = false;
  const update = async () => {
    if (busy) { again = true; return; }
    busy = true;
    try { do { again = false; await refresh(); } while (again); } catch (e) { fail(e); } finally { busy = false; }
  };
  while (!gone()) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const headers = { Accept: "text/event-stream" };
    if (token) headers.Authorization = "Bearer " + token;
    if (last) headers["Last-Event-ID"] = last;
    let r;
    try { r = await fetch("/runs/" + encodeURIComponent(id) + "/events", { headers, cache: "no-store" }); } catch (_) { r = null; }
    if (r && r.status === 204) return update();  // its end was seen: nothing more will come
    if (!r || !r.ok || !(r.headers.get("content-type") || "").startsWith("text/event-stream") || !r.body) {
      if (++failures >= 3 || (r && r.status !== 429 && r.status >= 400)) return live(false);
      await new Promise((ok) => setTimeout(ok, 1000 * failures));
      continue;
    }
    failures = 0;
    live(true);
    const reader = r.body.getReader(), decoder = new TextDecoder();
    let buf = "", ev = {}, ended = false;
    for (;;) {
      let chunk;
      try { chunk = await reader.read(); } catch (_) { break; }
      if (chunk.done || gone()) break;
      buf += decoder.decode(chunk.value, { stream: true });
      let n;
      while ((n = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, n).replace(/\r$/, ""); buf = buf.slice(n + 1);
        if (line === "") {
          if (ev.event) {
            if (ev.id) last = ev.id;
            if (ev.event === "end") ended = true;
            update();
          }
          ev = {};
        } else if (!line.startsWith(":")) {
          const k = line.indexOf(":"), field = k < 0 ? line : line.slice(0, k), value = k < 0 ? "" : line.slice(k + 1).replace(/^ /, "");
          if (field === "id") ev.id = value; else if (field === "event") ev.event = value; else if (field === "data") ev.data = (ev.data ? ev.data + "\n" : "") + value;
        }
      }
    }
    if (ended) return;
    await new Promise((ok) => setTimeout(ok, 1000));
  }
}

function fail(e) {
  if (e instanceof Unauthorized) return showLogin(e.message);
  main.replaceChildren(el("p", { class: "error", id: "page-error" }, e.message || String(e)));
}

async function route() {
  takeTokenFromFragment();
  const m = location.pathname.match(/^\/ui\/runs\/([^/]+)\/?$/);
  try {
    if (m) await runPage(decodeURIComponent(m[1])); else await listPage();
  } catch (e) { fail(e); }
}

window.addEventListener("popstate", route);
route();
