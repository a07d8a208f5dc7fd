// The answer page of an approval's single-use link: /ui/answer.html#<token>. The token stays
// in the fragment (never sent to a server but in the body of POST /answer); it names one
// waiting task, and works once.
"use strict";
const token = decodeURIComponent(location.hash.slice(1));
const main = document.getElementById("main");

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k);
  return e;
}

function say(text, cls) {
  main.replaceChildren(el("p", { class: cls || "", id: "result", text }));
}

async function post(body) {
  const r = await fetch("/answer", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(Object.assign({ token }, body)),
  });
  let v = {};
  try { v = await r.json(); } catch (_) { /* not JSON */ }
  return [r.status, v];
}

function input(name, f) {
  if (f.enum) {
    const s = el("select", { name, id: "f-" + name });
    if (f.required === false) s.append(el("option", { value: "", text: "—" }));
    for (const v of f.enum) s.append(el("option", { value: JSON.stringify(v), text: String(v) }));
    return s;
  }
  if (f.type === "boolean") return el("input", { type: "checkbox", name, id: "f-" + name });
  if (f.type === "number" || f.type === "integer") {
    return el("input", { type: "number", name, id: "f-" + name, step: f.type === "integer" ? "1" : "any" });
  }
  return el("input", { type: "text", name, id: "f-" + name });
}

function value(name, f) {
  const e = document.getElementById("f-" + name);
  if (f.enum) return e.value === "" ? undefined : JSON.parse(e.value);
  if (f.type === "boolean") return e.checked;
  if (e.value === "") return undefined;
  if (f.type === "number" || f.type === "integer") return Number(e.value);
  return e.value;
}

async function show() {
  if (!token) return say("This link has no token.", "error");
  const [status, q] = await post({});
  if (status !== 200) return say(q.error || ("HTTP " + status), "error");
  const fields = q.fields || {};
  const form = el("form", { class: "card", id: "answer" },
    el("h2", { text: q.prompt || ("Approve " + q.task + "?") }),
    el("p", { class: "muted", text: q.workflow + " · " + q.run_id + " · " + q.task }),
    // An agent's tool call: what it would run, with the arguments the model gave.
    q.call ? el("p", {}, "Tool call ", el("code", { id: "call", text: q.call.name + "(" + JSON.stringify(q.call.arguments) + ")" })) : "");
  for (const [name, f] of Object.entries(fields)) {
    form.append(el("label", { for: "f-" + name, text: name + (f.required === false ? "" : " *") }), input(name, f));
  }
  form.append(el("label", { for: "comment", text: "comment" }), el("textarea", { id: "comment", rows: "3" }));
  const approve = el("button", { type: "submit", id: "approve", text: "Approve" });
  const reject = el("button", { type: "button", id: "reject", text: "Reject" });
  form.append(el("p", {}, approve, " ", reject));
  const send = async (approved) => {
    const out = {};
    for (const [name, f] of Object.entries(fields)) {
      const v = value(name, f);
      if (v !== undefined) out[name] = v;
    }
    const comment = document.getElementById("comment").value;
    const [status, v] = await post({ approved, fields: out, comment: comment || undefined });
    if (status === 200) say(approved ? "Approved. Thank you." : "Rejected. Thank you.", "ok");
    else say(v.error || ("HTTP " + status), "error");
  };
  form.addEventListener("submit", (e) => { e.preventDefault(); send(true); });
  reject.addEventListener("click", () => send(false));
  main.replaceChildren(form);
}

show();
