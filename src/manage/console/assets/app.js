// vehicle-connect console: a client's targets, delivery log, events, test sends and
// self-service forms, over the /v1 management API. Everything the API returns is put in the
// page as text (textContent, attributes through setAttribute), never parsed as markup.
"use strict";

const TOKEN_KEY = "vc-console-token";
const EVENT_TYPES = [
  "vehicle.processed", "vehicle.images_uploaded", "vehicle.image_uploaded",
  "image.cropped_processed", "vehicle.created", "vehicle.updated", "vehicle.deleted",
  "vehicle.added", "user.created", "user.updated", "data.new",
];
const FTP_EVENT_TYPES = [
  "vehicle.processed", "vehicle.images_uploaded", "vehicle.image_uploaded",
  "image.cropped_processed", "vehicle.deleted",
];
const KIND_LABEL = {
  webhooksubscription: "Webhook", ftpconnection: "FTP connection", apiconnection: "API connection",
};
const SELF_SERVICE_PATH = { webhooksubscription: "webhooks", ftpconnection: "ftp-connections" };

// ---- DOM helpers: elements built from text, never from markup --------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "on") {
      for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
    } else if (k === "class") {
      el.className = v;
    } else if (v === true) {
      el.setAttribute(k, "");
    } else {
      el.setAttribute(k, String(v));
    }
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

let fieldSeq = 0;
function field(label, input, hint) {
  const id = input.id || `f${++fieldSeq}`;
  input.id = id;
  const errId = `${id}-err`;
  const parts = [h("label", { for: id }, label), input];
  if (hint) {
    const hintId = `${id}-hint`;
    parts.push(h("span", { id: hintId, class: "muted" }, hint));
    input.setAttribute("aria-describedby", `${hintId} ${errId}`);
  } else {
    input.setAttribute("aria-describedby", errId);
  }
  parts.push(h("span", { id: errId, class: "error-text" }));
  return h("div", { class: "field" }, parts);
}

function setPage(title, ...content) {
  const main = document.getElementById("main");
  main.replaceChildren(h("h1", {}, title), ...content);
  document.title = `${title} · vehicle-connect console`;
  main.focus();
}

let announceTimer = null;
function announce(text) {
  const s = document.getElementById("status");
  s.textContent = "";
  clearTimeout(announceTimer);
  // A fresh text node is announced even when the text repeats; it goes after a while so
  // that it does not cover the page on a phone.
  setTimeout(() => { s.textContent = text; }, 30);
  announceTimer = setTimeout(() => { s.textContent = ""; }, 8000);
}

function fmtTime(s) {
  if (!s) return "—";
  const d = new Date(s);
  return isNaN(d) ? String(s) : d.toLocaleString();
}

// ---- API -------------------------------------------------------------------------------------

class ApiFailure extends Error {
  constructor(status, body) {
    const msg = (body && body.message) || (status === 404 ? "not found" : `HTTP ${status}`);
    super(msg);
    this.status = status;
    this.body = body || {};
    this.field = this.body.field || null;
  }
}

async function api(method, path, body) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let res;
  try {
    res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), credentials: "omit", cache: "no-store" });
  } catch (e) {
    throw new ApiFailure(0, { message: `cannot reach the operator: ${e.message}` });
  }
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = { message: text.slice(0, 300) }; }
  if (res.status === 401 && path !== "/v1/targets") {
    signOut("Your token was refused; sign in again.");
  }
  if (!res.ok) throw new ApiFailure(res.status, data);
  return data;
}

function targetRef(t) { return `${t.kind}/${t.namespace}/${t.name}`; }
function enc(s) { return encodeURIComponent(s); }

function errorBox(e, what) {
  const missing = e.status === 404 && !(e.body && e.body.error);
  const text = missing
    ? `${what}: this operator does not offer that yet.`
    : `${what}: ${e.message}${e.field ? ` (field ${e.field})` : ""}`;
  return h("div", { class: "alert", role: "alert" }, text);
}

// ---- sign in -----------------------------------------------------------------------------------

let pendingMessage = null;

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  pendingMessage = message;
  if (location.hash === "#/signin") route();
  else location.hash = "#/signin"; // hashchange routes
}

function pageSignIn(message) {
  document.getElementById("nav").hidden = true;
  const input = h("input", { type: "password", name: "token", autocomplete: "off", required: true, spellcheck: "false" });
  const out = h("div", { id: "signin-result", "aria-live": "assertive" });
  if (message) out.append(h("p", { class: "alert", role: "alert" }, message));
  const button = h("button", { type: "submit" }, "Sign in");
  const form = h("form", { class: "stack", id: "signin", novalidate: true },
    field("Client token", input, "The manage token your platform operator gave you. It is kept only in this browser tab."),
    h("div", { class: "actions" }, button), out);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const token = input.value.trim();
    out.replaceChildren();
    if (!token) {
      out.append(h("p", { class: "alert", role: "alert" }, "Enter a token."));
      input.focus();
      return;
    }
    button.disabled = true;
    sessionStorage.setItem(TOKEN_KEY, token);
    try {
      await api("GET", "/v1/targets");
      location.hash = "#/targets";
    } catch (e) {
      sessionStorage.removeItem(TOKEN_KEY);
      const text = e.status === 401
        ? "That token was refused. Check it and try again."
        : `Cannot sign in: ${e.message}`;
      out.append(h("p", { class: "alert", role: "alert", id: "signin-refused" }, text));
      input.setAttribute("aria-invalid", "true");
      input.focus();
    } finally {
      button.disabled = false;
    }
  });
  setPage("Sign in", form);
  input.focus();
}

// ---- targets -----------------------------------------------------------------------------------

function conditionBadges(conds) {
  if (!conds || !conds.length) return [h("span", { class: "muted" }, "no status yet")];
  return conds.map((c) => {
    const good = (c.type === "Ready" || c.type === "Delivering" || c.type === "Connected") ? c.status === "True" : c.status !== "True";
    const title = [c.reason, c.message].filter(Boolean).join(": ");
    return h("span", { class: `badge ${good ? "ok" : "bad"}`, title: title || null },
      `${c.type}: ${c.status}${c.reason ? ` (${c.reason})` : ""}`);
  });
}

function testForm(t) {
  const types = t.events && t.events.length ? t.events : EVENT_TYPES;
  const select = h("select", { name: "type" }, types.map((ty) => h("option", { value: ty }, ty)));
  const out = h("div", { class: "result", "aria-live": "polite" });
  const button = h("button", { type: "submit", class: "secondary" }, "Send test event");
  const form = h("form", { class: "inline", "aria-label": `Send a test event to ${t.name}` },
    field("Event type", select), button);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    button.disabled = true;
    out.replaceChildren(h("p", {}, "Sending…"));
    try {
      const r = await api("POST", `/v1/targets/${t.kind}/${enc(t.namespace)}/${enc(t.name)}/test`, { type: select.value });
      out.replaceChildren(answerView(r, "Test event"));
      announce(`Test event sent to ${t.name}`);
    } catch (e) {
      out.replaceChildren(errorBox(e, "Test event"));
    } finally {
      button.disabled = false;
    }
  });
  return h("div", {}, form, out);
}

function answerView(r, what) {
  r = r || {};
  if (r.queued !== undefined && r.result === undefined) {
    return h("p", { class: "notice" }, `${what}: queued again`,
      r.queued === 0 && r.note ? ` — ${r.note}` : "", ". It shows in the delivery log once tried.");
  }
  const status = r.httpStatus ?? r.status ?? r.ftpReply ?? null;
  const ok = r.result ? r.result === "delivered" : (typeof status === "number" && status < 300);
  const lines = [
    h("p", { class: ok ? "notice" : "alert" },
      `${what}: ${r.result || (ok ? "delivered" : "failed")}`,
      status !== null ? ` — answer ${status}` : "",
      r.durationMs !== undefined ? ` in ${r.durationMs} ms` : "",
      r.reason ? ` — ${r.reason}` : "", r.message ? `: ${r.message}` : ""),
  ];
  const body = r.response ?? r.body;
  if (body) lines.push(h("pre", { "aria-label": "Receiver's answer" }, typeof body === "string" ? body : JSON.stringify(body, null, 2)));
  return h("div", {}, lines);
}

function replayForm(t) {
  const since = h("input", { type: "datetime-local", name: "since", required: true });
  const until = h("input", { type: "datetime-local", name: "until" });
  const out = h("div", { class: "result", "aria-live": "polite" });
  const button = h("button", { type: "submit", class: "secondary" }, "Replay");
  const form = h("form", { class: "inline", "aria-label": `Replay events to ${t.name}` },
    field("Since", since), field("Until (empty: now)", until), button);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (!since.value) { since.setAttribute("aria-invalid", "true"); since.focus(); return; }
    button.disabled = true;
    const body = { since: new Date(since.value).toISOString() };
    if (until.value) body.until = new Date(until.value).toISOString();
    try {
      const r = (await api("POST", `/v1/targets/${t.kind}/${enc(t.namespace)}/${enc(t.name)}/replay`, body)) || {};
      const n = r.queued ?? r.events ?? r.count;
      out.replaceChildren(h("p", { class: "notice" }, `Replay started${n !== undefined ? `: ${n} events queued` : ""}`,
        r.matched !== undefined ? ` of ${r.matched} matching` : "",
        r.tooOld ? `, ${r.tooOld} too old for the retry policy` : "",
        r.truncated ? ` (cut short${r.backlogFull ? ": the backlog is half full" : ""}; replay on from ${r.stoppedAt ?? "there"} later)` : "", "."));
      announce("Replay started");
    } catch (e) {
      out.replaceChildren(errorBox(e, "Replay"));
    } finally {
      button.disabled = false;
    }
  });
  return h("div", {}, form, out);
}

async function pageTargets() {
  setPage("Targets", h("p", { "aria-busy": "true" }, "Loading…"));
  let data;
  try {
    data = await api("GET", "/v1/targets");
  } catch (e) {
    setPage("Targets", errorBox(e, "Targets"));
    return;
  }
  const targets = data.targets || [];
  if (!targets.length) {
    setPage("Targets", h("p", {}, "No targets yet. "), h("p", {}, h("a", { href: "#/webhook" }, "Add a webhook"), " or ", h("a", { href: "#/ftp" }, "an FTP connection"), "."));
    return;
  }
  const rows = targets.map((t) => {
    const c = t.counters || {};
    const last = c.lastFailure
      ? h("span", { class: "bad" }, `${fmtTime(c.lastFailure.at)}: ${c.lastFailure.reason} ${c.lastFailure.message}`)
      : "—";
    const edit = t.selfService && SELF_SERVICE_PATH[t.kind]
      ? h("a", { href: `#/${t.kind === "ftpconnection" ? "ftp" : "webhook"}/${enc(t.name)}` }, "Edit") : null;
    const details = h("details", {}, h("summary", {}, "Test, replay"), testForm(t), replayForm(t));
    return h("tr", { "data-target": targetRef(t) },
      h("td", { "data-label": "Target" }, h("strong", {}, t.name), h("br"),
        h("span", { class: "muted" }, `${KIND_LABEL[t.kind] || t.kind} · ${t.namespace}`),
        t.selfService ? h("span", { class: "badge" }, "self-service") : null),
      h("td", { "data-label": "Client" }, t.client),
      h("td", { "data-label": "Endpoint", class: "mono" }, t.endpoint || "—"),
      h("td", { "data-label": "Health" }, conditionBadges(t.conditions),
        t.held ? h("span", { class: "badge warn" }, `held: ${t.held}`) : null),
      h("td", { "data-label": "Delivered", class: "num" }, c.delivered ?? 0),
      h("td", { "data-label": "Failed", class: "num" }, c.failed ?? 0),
      h("td", { "data-label": "Pending", class: "num" }, c.pending ?? 0),
      h("td", { "data-label": "Last delivery" }, c.lastDelivery ? fmtTime(c.lastDelivery.at) : "—"),
      h("td", { "data-label": "Last failure" }, last),
      h("td", { "data-label": "Actions" },
        h("div", { class: "actions" },
          h("a", { href: `#/log?target=${enc(targetRef(t))}` }, "Delivery log"), edit),
        details));
  });
  const table = h("table", { class: "cards", id: "targets" },
    h("caption", { class: "muted" }, `${targets.length} target${targets.length === 1 ? "" : "s"}`),
    h("thead", {}, h("tr", {}, ["Target", "Client", "Endpoint", "Health", "Delivered", "Failed", "Pending", "Last delivery", "Last failure", "Actions"].map((x) => h("th", { scope: "col" }, x)))),
    h("tbody", {}, rows));
  setPage("Targets", h("div", { class: "scroll" }, table));
}

// ---- delivery log ------------------------------------------------------------------------------

function hashQuery() {
  const i = location.hash.indexOf("?");
  return new URLSearchParams(i < 0 ? "" : location.hash.slice(i + 1));
}

async function pageLog() {
  const q = hashQuery();
  const target = h("select", { name: "target" }, h("option", { value: "" }, "All targets"));
  const status = h("select", { name: "status" },
    [["", "Any result"], ["failed", "Failed"], ["delivered", "Delivered"], ["retry", "Retrying"], ["gone", "Gone (410)"], ["dropped", "Dropped"], ["expired", "Expired"]]
      .map(([v, l]) => h("option", { value: v }, l)));
  const vehicle = h("input", { type: "search", name: "vehicle", autocomplete: "off" });
  const since = h("input", { type: "datetime-local", name: "since" });
  const form = h("form", { class: "inline", id: "log-filter", role: "search", "aria-label": "Filter deliveries" },
    field("Target", target), field("Result", status), field("Vehicle (VIN or id)", vehicle), field("Since", since),
    h("button", { type: "submit" }, "Show"));
  const list = h("div", { id: "log-entries", "aria-live": "polite" });
  setPage("Delivery log", form, list);

  try {
    const data = await api("GET", "/v1/targets");
    for (const t of data.targets || []) target.append(h("option", { value: targetRef(t) }, `${t.name} (${KIND_LABEL[t.kind] || t.kind}, ${t.namespace})`));
  } catch (_) { /* the log works without the list */ }
  target.value = q.get("target") || "";
  if (target.value !== (q.get("target") || "")) target.append(h("option", { value: q.get("target"), selected: true }, q.get("target")));
  status.value = q.get("status") || "";
  vehicle.value = q.get("vehicle") || "";
  if (q.get("since")) { const d = new Date(q.get("since")); if (!isNaN(d)) since.value = toLocalInput(d); }

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const p = new URLSearchParams();
    if (target.value) p.set("target", target.value);
    if (status.value) p.set("status", status.value);
    if (vehicle.value.trim()) p.set("vehicle", vehicle.value.trim());
    if (since.value) p.set("since", new Date(since.value).toISOString());
    location.hash = `#/log?${p}`;
  });
  await loadLog(q, list, null);
}

function toLocalInput(d) {
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

async function loadLog(q, list, cursor) {
  const p = new URLSearchParams();
  for (const k of ["target", "status", "vehicle", "since", "until", "type", "event", "client"]) if (q.get(k)) p.set(k, q.get(k));
  p.set("limit", "50");
  if (cursor) p.set("cursor", cursor);
  let data;
  try {
    data = await api("GET", `/v1/deliveries?${p}`);
  } catch (e) {
    list.replaceChildren(errorBox(e, "Delivery log"));
    return;
  }
  const entries = Array.isArray(data) ? data : (data.deliveries || data.items || data.entries || []);
  let table = list.querySelector("table");
  if (!cursor || !table) {
    if (!entries.length) { list.replaceChildren(h("p", { id: "log-empty" }, "No deliveries match.")); return; }
    table = h("table", { class: "cards", id: "log" },
      h("thead", {}, h("tr", {}, ["Time", "Event", "Vehicle", "Target", "Attempt", "Result", "Answer", "Actions"].map((x) => h("th", { scope: "col" }, x)))),
      h("tbody", {}));
    list.replaceChildren(table);
  }
  const tbody = table.querySelector("tbody");
  for (const d of entries) tbody.append(logRow(d));
  const more = list.querySelector("#log-more");
  if (more) more.remove();
  if (data.next) {
    const b = h("button", { type: "button", id: "log-more", class: "secondary" }, "Load more");
    b.addEventListener("click", () => { b.disabled = true; loadLog(q, list, data.next); });
    list.append(b);
  }
}

function resultBadge(result) {
  const cls = result === "delivered" ? "ok" : (result === "skipped" || result === "dropped" ? "warn" : "bad");
  return h("span", { class: `badge ${cls}` }, result || "?");
}

function logRow(d) {
  const ev = d.event || {};
  const t = d.target || {};
  const answer = d.httpStatus ?? d.ftpReply ?? null;
  const out = h("div", { class: "result", "aria-live": "polite" });
  const retry = h("button", { type: "button", class: "secondary", "data-retry": d.id }, "Retry");
  retry.setAttribute("aria-label", `Retry event ${ev.id || ""} to ${t.name || ""}`);
  retry.addEventListener("click", async () => {
    retry.disabled = true;
    out.replaceChildren(h("p", {}, "Retrying…"));
    try {
      const r = await api("POST", `/v1/deliveries/${enc(d.id)}/retry`);
      out.replaceChildren(answerView(r, "Retry"));
      announce(`Retry of ${ev.id || "the event"}: ${(r && r.result) || "sent"}`);
    } catch (e) {
      out.replaceChildren(errorBox(e, "Retry"));
    } finally {
      retry.disabled = false;
    }
  });
  const eventLink = ev.id
    ? h("a", { href: `#/event/${enc(ev.id)}?client=${enc(ev.client || "")}` }, ev.id) : "—";
  return h("tr", { "data-entry": d.id, "data-result": d.result || "" },
    h("td", { "data-label": "Time" }, fmtTime(d.at)),
    h("td", { "data-label": "Event" }, eventLink, h("br"), h("span", { class: "muted" }, ev.type || "")),
    h("td", { "data-label": "Vehicle", class: "mono" }, ev.vehicle || "—"),
    h("td", { "data-label": "Target" }, t.name || "—", h("br"), h("span", { class: "muted" }, `${KIND_LABEL[t.kind] || t.kind || ""} · ${t.namespace || ""}`)),
    h("td", { "data-label": "Attempt", class: "num" }, d.attempt ?? "—"),
    h("td", { "data-label": "Result" }, resultBadge(d.result), d.reason ? h("span", { class: "muted" }, ` ${d.reason}`) : null),
    h("td", { "data-label": "Answer" }, answer !== null ? String(answer) : "—",
      d.durationMs !== undefined && d.durationMs !== null ? h("span", { class: "muted" }, ` ${d.durationMs} ms`) : null,
      d.message ? h("div", { class: "muted" }, d.message) : null),
    h("td", { "data-label": "Actions" }, retry, out));
}

// ---- one event ---------------------------------------------------------------------------------

async function pageEvent(id) {
  const q = hashQuery();
  const client = q.get("client");
  setPage(`Event ${id}`, h("p", { "aria-busy": "true" }, "Loading…"));
  let data;
  try {
    data = await api("GET", `/v1/events/${enc(id)}${client ? `?client=${enc(client)}` : ""}`);
  } catch (e) {
    setPage(`Event ${id}`, errorBox(e, "Event"));
    return;
  }
  const body = data.event && typeof data.event === "object" ? data.event : null;
  const vehicle = (body && body.data && body.data.vehicle) || {};
  const ev = {
    id: data.id || (body && body.id) || id,
    type: body && body.type,
    client: data.client || (body && body.clientId) || client,
    vehicle: vehicle.vin || vehicle.id,
    accepted: data.accepted,
  };
  const facts = h("dl", { class: "panel", id: "event-facts" },
    [["id", "Event"], ["type", "Type"], ["client", "Client"], ["vehicle", "Vehicle"], ["accepted", "Accepted"]]
      .filter(([k]) => ev[k] !== undefined && ev[k] !== null)
      .flatMap(([k, label]) => [h("dt", {}, label), h("dd", { class: "mono" }, k === "accepted" ? fmtTime(ev[k]) : String(ev[k]))]));
  const parts = [facts];
  if (body) {
    parts.push(h("details", {}, h("summary", {}, "Event body"), h("pre", {}, JSON.stringify(body, null, 2))));
  }
  const groups = groupAttempts(data);
  if (!groups.length) parts.push(h("p", {}, "No delivery attempts recorded."));
  for (const g of groups) {
    const t = g.target || {};
    const out = h("div", { class: "result", "aria-live": "polite" });
    const redeliver = h("button", { type: "button", class: "secondary" }, `Redeliver to ${t.name || "this target"}`);
    redeliver.addEventListener("click", async () => {
      redeliver.disabled = true;
      try {
        const r = await api("POST", `/v1/targets/${t.kind}/${enc(t.namespace)}/${enc(t.name)}/redeliver`, { eventId: ev.id, client: ev.client });
        out.replaceChildren(answerView(r, "Redelivery"));
        announce("Redelivered");
      } catch (e) {
        out.replaceChildren(errorBox(e, "Redelivery"));
      } finally {
        redeliver.disabled = false;
      }
    });
    const rows = (g.attempts || []).map((a) => h("tr", {},
      h("td", { "data-label": "Time" }, fmtTime(a.at)),
      h("td", { "data-label": "Attempt", class: "num" }, a.attempt ?? "—"),
      h("td", { "data-label": "Result" }, resultBadge(a.result), a.reason ? ` ${a.reason}` : ""),
      h("td", { "data-label": "Answer" }, String(a.httpStatus ?? a.ftpReply ?? "—"),
        a.durationMs !== undefined && a.durationMs !== null ? ` (${a.durationMs} ms)` : "",
        a.message ? h("div", { class: "muted" }, a.message) : null),
      h("td", { "data-label": "Receiver's answer" }, a.response ? h("pre", {}, a.response) : "—")));
    parts.push(h("section", { "aria-label": `Attempts to ${t.name || "target"}` },
      h("h2", {}, `${KIND_LABEL[t.kind] || t.kind || "Target"} ${t.namespace || ""}/${t.name || ""}`),
      g.pending ? h("p", { class: "warn" }, "Still pending for this target.") : null,
      h("table", { class: "cards" },
        h("thead", {}, h("tr", {}, ["Time", "Attempt", "Result", "Answer", "Receiver's answer"].map((x) => h("th", { scope: "col" }, x)))),
        h("tbody", {}, rows)),
      h("div", { class: "actions" }, redeliver), out));
  }
  setPage(`Event ${id}`, ...parts);
}

// `targets: [{target, attempts}]`, or a flat `deliveries` list grouped here.
function groupAttempts(data) {
  if (Array.isArray(data.targets)) return data.targets;
  const flat = data.deliveries || data.attempts || [];
  const by = new Map();
  for (const a of flat) {
    const t = a.target || {};
    const k = `${t.kind}/${t.namespace}/${t.name}`;
    if (!by.has(k)) by.set(k, { target: t, attempts: [] });
    by.get(k).attempts.push(a);
  }
  return [...by.values()];
}

// ---- self-service forms ------------------------------------------------------------------------

function checks(name, legend, types, chosen) {
  return h("fieldset", {}, h("legend", {}, legend),
    h("div", { class: "checks" }, types.map((ty) => h("label", {},
      h("input", { type: "checkbox", name, value: ty, checked: chosen.includes(ty) }), ty))));
}

function checked(form, name) {
  return [...form.querySelectorAll(`input[name="${name}"]:checked`)].map((i) => i.value);
}

// Marks the input the API named (`field`) and says why next to it.
function showFieldError(form, e) {
  for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  for (const el of form.querySelectorAll(".error-text")) el.textContent = "";
  if (!e.field) return null;
  const names = [e.field, e.field.replace(/^spec\./, ""), e.field.split(".").pop()];
  for (const n of names) {
    const el = form.querySelector(`[data-field="${CSS.escape(n)}"]`) || form.querySelector(`[name="${CSS.escape(n)}"]`);
    if (el) {
      el.setAttribute("aria-invalid", "true");
      const err = document.getElementById(`${el.id}-err`);
      if (err) err.textContent = e.message;
      return el;
    }
  }
  return null;
}

// `?client=` for a token of several clients (or the platform's), from the form's Client field.
function clientQuery(form) {
  const c = form.querySelector("input[name=client]");
  return c && c.value.trim() ? `?client=${enc(c.value.trim())}` : "";
}

async function submitResource(form, out, kind, name, body) {
  const base = `/v1/self-service/${SELF_SERVICE_PATH[kind]}`;
  const q = clientQuery(form);
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  out.replaceChildren(h("p", {}, "Saving…"));
  try {
    if (name) await api("PUT", `${base}/${enc(name)}${q}`, body);
    else await api("POST", `${base}${q}`, body);
    showFieldError(form, {});
    out.replaceChildren(h("p", { class: "notice", role: "status" }, `Saved ${body.name}. `, h("a", { href: "#/targets" }, "See its health on Targets"), "."));
    announce(`Saved ${body.name}`);
  } catch (e) {
    const el = showFieldError(form, e);
    out.replaceChildren(errorBox(e, "Not saved"));
    if (el) el.focus();
  } finally {
    button.disabled = false;
  }
}

// `{name, spec, credentials: [names set], resourceVersion, clientId, …}`.
async function loadResource(kind, name) {
  const q = hashQuery().get("client");
  return await api("GET", `/v1/self-service/${SELF_SERVICE_PATH[kind]}/${enc(name)}${q ? `?client=${enc(q)}` : ""}`) || {};
}

function clientField(cur) {
  const c = h("input", { name: "client", autocomplete: "off", value: cur.clientId || hashQuery().get("client") || "" });
  return field("Client id", c, "Only for a token of several clients (or the platform's).");
}

function deleteButton(kind, name, out) {
  if (!name) return null;
  const b = h("button", { type: "button", class: "secondary", id: "delete" }, `Delete ${name}`);
  b.addEventListener("click", async () => {
    if (!confirm(`Delete ${name}? Its credentials are deleted with it.`)) return;
    b.disabled = true;
    try {
      const q = b.form ? clientQuery(b.form) : "";
      await api("DELETE", `/v1/self-service/${SELF_SERVICE_PATH[kind]}/${enc(name)}${q}`);
      announce(`Deleted ${name}`);
      location.hash = "#/targets";
    } catch (e) {
      out.replaceChildren(errorBox(e, "Not deleted"));
      b.disabled = false;
    }
  });
  return b;
}

async function pageWebhook(name) {
  const title = name ? `Edit webhook ${name}` : "Add a webhook";
  let cur = {};
  if (name) {
    try { cur = await loadResource("webhooksubscription", name); } catch (e) { setPage(title, errorBox(e, "Webhook")); return; }
  }
  const spec = cur.spec || {};
  const hasBasic = (cur.credentials || []).includes("basic");
  const nameIn = h("input", { name: "name", required: true, value: name || "", readonly: !!name, pattern: "[a-z0-9]([-a-z0-9]*[a-z0-9])?", autocomplete: "off" });
  const url = h("input", { name: "url", type: "url", required: true, value: spec.url || "", placeholder: "https://crm.example.com/hooks/vehicles", autocomplete: "off", "data-field": "spec.url" });
  const user = h("input", { name: "username", autocomplete: "off", "data-field": "credentials.basic.username" });
  const pass = h("input", { name: "password", type: "password", autocomplete: "new-password", "data-field": "credentials.basic.password" });
  const out = h("div", { id: "form-result", "aria-live": "polite" });
  const events = checks("events", "Events", EVENT_TYPES, spec.events || ["vehicle.processed"]);
  events.setAttribute("data-field", "spec.events");
  const form = h("form", { class: "stack", id: "webhook-form", novalidate: true },
    field("Name", nameIn, "Lower-case letters, digits and dashes."),
    field("URL", url, "Where events are POSTed, signed (Standard Webhooks)."),
    events,
    h("fieldset", {}, h("legend", {}, "Basic authentication (optional)"),
      field("Username", user, hasBasic ? "Set now; leave both empty to keep it." : null), field("Password", pass)),
    clientField(cur),
    h("div", { class: "actions" }, h("button", { type: "submit" }, name ? "Save" : "Add webhook"),
      deleteButton("webhooksubscription", name, out)), out);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    // A PUT replaces the spec: what the form does not show is sent back as it was. The
    // generation read (not the resourceVersion, which the operator's status writes move)
    // refuses the edit if someone else changed the spec meanwhile.
    const body = { name: nameIn.value.trim(), spec: { ...spec, url: url.value.trim(), events: checked(form, "events") } };
    if (name && cur.generation) body.generation = cur.generation;
    if (user.value.trim()) body.credentials = { basic: { username: user.value.trim(), password: pass.value } };
    submitResource(form, out, "webhooksubscription", name, body);
  });
  setPage(title, form);
}

async function pageFtp(name) {
  const title = name ? `Edit FTP connection ${name}` : "Add an FTP connection";
  let cur = {};
  if (name) {
    try { cur = await loadResource("ftpconnection", name); } catch (e) { setPage(title, errorBox(e, "FTP connection")); return; }
  }
  const spec = cur.spec || {};
  const rules = spec.rules || {};
  const inp = (n, attrs) => h("input", { name: n, autocomplete: "off", ...attrs });
  const nameIn = inp("name", { required: true, value: name || "", readonly: !!name });
  const host = inp("host", { required: true, value: spec.host || "", placeholder: "ftp.dealer.example", "data-field": "spec.host" });
  const port = inp("port", { type: "number", min: 1, max: 65535, value: spec.port || "", inputmode: "numeric", "data-field": "spec.port" });
  const protocol = h("select", { name: "protocol", "data-field": "spec.protocol" }, ["ftp", "ftps", "ftps-implicit", "sftp"].map((p) => h("option", { value: p, selected: (spec.protocol || "ftp") === p }, p)));
  const user = inp("username", { "data-field": "credentials.username" });
  const pass = h("input", { name: "password", type: "password", autocomplete: "new-password", "data-field": "credentials.password" });
  const base = inp("rules.baseDirectory", { value: rules.baseDirectory || "", "data-field": "baseDirectory" });
  const dir = inp("rules.directory", { value: rules.directory || "", placeholder: "{vin}", "data-field": "directory" });
  const layout = h("select", { name: "rules.layout", "data-field": "layout" }, ["files", "zip"].map((l) => h("option", { value: l, selected: (rules.layout || "files") === l }, l)));
  const fileName = inp("rules.fileName", { value: rules.fileName || "{vin}_{index:02}.{ext}", "data-field": "fileName" });
  const archive = inp("rules.archiveName", { value: rules.archiveName || "{vin}.zip", "data-field": "archiveName" });
  const meta = h("input", { type: "checkbox", name: "metadata", checked: !!rules.metadata });
  const metaName = inp("rules.metadata.fileName", { value: (rules.metadata && rules.metadata.fileName) || "{vin}.json", "data-field": "metadata.fileName" });
  const sample = {
    vin: inp("sample.vin", { value: "WVWZZZ1JZXW000001" }), stockNumber: inp("sample.stock", { value: "A1234" }),
    make: inp("sample.make", { value: "Volkswagen" }), model: inp("sample.model", { value: "Golf" }),
    year: inp("sample.year", { type: "number", value: "2021", inputmode: "numeric" }),
  };
  const preview = h("div", { id: "preview", class: "panel preview", "aria-live": "polite" });
  const out = h("div", { id: "form-result", "aria-live": "polite" });
  const events = checks("events", "Events", FTP_EVENT_TYPES, spec.events || ["vehicle.processed"]);
  events.setAttribute("data-field", "spec.events");
  const form = h("form", { class: "stack", id: "ftp-form", novalidate: true },
    field("Name", nameIn),
    h("fieldset", {}, h("legend", {}, "Server"),
      field("Host", host), field("Port", port, "Empty: 21, or 22 for sftp."), field("Protocol", protocol),
      field("Username", user, name ? "Leave both empty to keep the current ones." : null), field("Password", pass)),
    events,
    h("fieldset", {}, h("legend", {}, "Naming rules"),
      h("p", { class: "hint" }, "Placeholders: {vin} {stock} {index} {index:02} {ext} {client} {user} {vehicle} {make} {model} {year} {event} {date} {time}"),
      field("Base directory", base), field("Directory per vehicle", dir), field("Layout", layout),
      field("File name", fileName), field("Archive name (zip)", archive),
      h("label", {}, meta, " Write a metadata JSON file"), field("Metadata file name", metaName)),
    h("fieldset", {}, h("legend", {}, "Sample vehicle for the preview"),
      field("VIN", sample.vin), field("Stock number", sample.stockNumber), field("Make", sample.make),
      field("Model", sample.model), field("Year", sample.year)),
    h("section", { "aria-label": "File name preview" }, h("h2", {}, "Preview"), preview),
    clientField(cur),
    h("div", { class: "actions" }, h("button", { type: "submit" }, name ? "Save" : "Add FTP connection"),
      deleteButton("ftpconnection", name, out)), out);

  const rulesOf = () => {
    const r = { baseDirectory: base.value, directory: dir.value, layout: layout.value, fileName: fileName.value, archiveName: archive.value };
    if (meta.checked) r.metadata = { fileName: metaName.value };
    return r;
  };
  let timer = null;
  let seq = 0;
  const refresh = async () => {
    const mine = ++seq;
    const v = {};
    for (const [k, el] of Object.entries(sample)) if (el.value.trim()) v[k] = k === "year" ? Number(el.value) : el.value.trim();
    try {
      const p = await api("POST", "/v1/preview/file-names", { rules: rulesOf(), vehicle: v, images: 3 });
      if (mine !== seq) return;
      showFieldError(form, {});
      const items = [];
      if (p.archive) items.push(h("li", {}, p.archive));
      for (const f of p.files) items.push(h("li", {}, p.archive ? `  ${p.archive} → ${f}` : f));
      if (p.metadata) items.push(h("li", {}, p.metadata));
      preview.replaceChildren(h("p", {}, "Files for the sample vehicle:"), h("ul", { id: "preview-names" }, items));
    } catch (e) {
      if (mine !== seq) return;
      showFieldError(form, e);
      preview.replaceChildren(h("p", { class: "alert", id: "preview-error" }, e.field ? `${e.field}: ${e.message}` : e.message));
    }
  };
  form.addEventListener("input", (ev) => {
    if (!ev.target.name || !(ev.target.name.startsWith("rules.") || ev.target.name.startsWith("sample.") || ev.target.name === "metadata")) return;
    clearTimeout(timer);
    timer = setTimeout(refresh, 250);
  });
  form.addEventListener("change", (ev) => { if (ev.target === layout || ev.target === meta) refresh(); });
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const s2 = { ...spec, host: host.value.trim(), protocol: protocol.value, events: checked(form, "events"), rules: { ...rules, ...rulesOf() } };
    if (port.value) s2.port = Number(port.value); else delete s2.port;
    if (!meta.checked) delete s2.rules.metadata;
    const body = { name: nameIn.value.trim(), spec: s2 };
    if (name && cur.generation) body.generation = cur.generation;
    if (user.value.trim() || pass.value) body.credentials = { username: user.value.trim(), password: pass.value };
    submitResource(form, out, "ftpconnection", name, body);
  });
  setPage(title, form);
  refresh();
}

// ---- routing -----------------------------------------------------------------------------------

function route() {
  const message = pendingMessage;
  pendingMessage = null;
  const token = sessionStorage.getItem(TOKEN_KEY);
  const path = location.hash.replace(/^#/, "").split("?")[0] || "/targets";
  const nav = document.getElementById("nav");
  if (!token || path === "/signin") {
    pageSignIn(message);
    return;
  }
  nav.hidden = false;
  const [, page, arg] = path.split("/");
  for (const a of nav.querySelectorAll("a")) {
    if (a.dataset.page === page && !arg) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const name = arg ? decodeURIComponent(arg) : null;
  switch (page) {
    case "log": pageLog(); break;
    case "event": pageEvent(name); break;
    case "webhook": pageWebhook(name); break;
    case "ftp": pageFtp(name); break;
    default: pageTargets();
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("sign-out").addEventListener("click", () => signOut("Signed out."));
  window.addEventListener("hashchange", () => route());
  route();
});
