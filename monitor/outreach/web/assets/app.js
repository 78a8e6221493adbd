// satmon outreach page: plain JS, no build step. The token lives in sessionStorage (this tab only)
// and goes out as a Bearer header; every value from the server is written with textContent, never
// as HTML, so a reason text can never inject markup.
"use strict";

const TOKEN_KEY = "satmon.token";
const API = new URL("../api/v1/", document.baseURI);
const $ = (sel) => document.querySelector(sel);
let me = null;          // {name, role}
let nextCursor = null;  // cursor of the current walk
let currentFilters = {};
let currentSubscriber = null;
let affectedPath = null;  // "incidents/<id>/affected" or "hotspots/<cell>/affected" shown below the incidents

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.detail) || `HTTP ${status}`);
    this.status = status;
    this.code = body && body.error;
  }
}

async function api(path, { params = {}, method = "GET", body = null, raw = false } = {}) {
  const url = new URL(path, API);
  for (const [k, v] of Object.entries(params)) if (v !== "" && v != null) url.searchParams.set(k, v);
  const headers = { Authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY) || ""}` };
  if (body) headers["Content-Type"] = "application/json";
  const resp = await fetch(url, { method, headers, body: body ? JSON.stringify(body) : null, cache: "no-store" });
  if (!resp.ok) {
    let data = null;
    try { data = await resp.json(); } catch (e) { /* not JSON */ }
    const err = new ApiError(resp.status, data);
    if (resp.status === 401) signOut(err.message);
    throw err;
  }
  return raw ? resp : resp.json();
}

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text != null) node.textContent = text;
  if (cls) node.className = cls;
  return node;
}

function when(ms) {
  return ms == null ? "" : new Date(ms).toISOString().replace("T", " ").slice(0, 16);
}

function say(text, isError = false) {
  const m = $("#message");
  m.textContent = text;
  m.className = isError ? "message error" : "message";
}

function signOut(reason) {
  sessionStorage.removeItem(TOKEN_KEY);
  me = null;
  $("#app").hidden = true;
  $("#session").hidden = true;
  $("#login").hidden = false;
  $("#login-error").textContent = reason || "";
}

async function signIn() {
  me = await api("whoami");
  $("#who").textContent = me.name;
  $("#role").textContent = me.role;
  $("#login").hidden = true;
  $("#session").hidden = false;
  $("#app").hidden = false;
  const rows = me.role !== "noc";
  $("#list").hidden = !rows;
  $("#noc-note").hidden = rows;
  await loadOverview();
  if (rows) await loadList(true);
}

async function loadOverview() {
  const [summary, hs, inc] = await Promise.all([api("summary"), api("hotspots"), api("incidents")]);
  const tbody = $("#regions tbody");
  tbody.replaceChildren();
  for (const r of summary.by_region) {
    const tr = el("tr");
    tr.append(el("td", r.region ?? "(none)"), el("td", r.subscribers), el("td", r.at_risk));
    tbody.append(tr);
  }
  const hbody = $("#hotspots tbody");
  hbody.replaceChildren();
  for (const h of hs.hotspots) {
    const tr = el("tr");
    tr.append(el("td", h.cell), el("td", h.region ?? ""), el("td", h.severity), el("td", when(h.starts_at_ms)),
              el("td", h.affected));
    hbody.append(tr);
    if (me.role !== "noc") {
      tr.dataset.cell = h.cell;
      tr.addEventListener("click", () => showAffected(`hotspots/${encodeURIComponent(h.cell)}/affected`,
                                                       `hot spot ${h.cell}`).catch(showError));
    }
  }
  const ibody = $("#incidents tbody");
  ibody.replaceChildren();
  for (const i of inc.incidents) {
    const tr = el("tr", null, i.status);
    tr.dataset.incident = i.incident_id;
    const cells = i.cells.length > 6 ? `${i.cells.slice(0, 6).join(", ")} ... (${i.cells.length})` : i.cells.join(", ");
    const action = el("td");
    if (me.role !== "noc") {
      const b = el("button", "Customers");
      b.type = "button";
      b.addEventListener("click", () => showAffected(`incidents/${encodeURIComponent(i.incident_id)}/affected`,
                                                     `the ${i.region} incident`).catch(showError));
      action.append(b);
    }
    tr.append(el("td", i.region), el("td", i.status), el("td", i.severity), el("td", cells), el("td", i.kpis.join(", ")),
              el("td", when(i.started_at_ms)), el("td", i.affected_subscribers), el("td", i.customers), action);
    ibody.append(tr);
  }
}

function affectedParams() {
  const p = {};
  const since = $("#a-since").value;
  if (since) p.since = `${since}:00Z`;
  const uses = $("#a-min-uses").value;
  if (uses) p.min_uses = uses;
  return p;
}

async function showAffected(path, what) {
  if (path !== affectedPath) $("#a-since").value = "";
  affectedPath = path;
  const data = await api(path, { params: { ...affectedParams(), limit: 100 } });
  $("#affected").hidden = false;
  $("#a-what").textContent = what;
  $("#a-counts").textContent = `${data.affected} served since ${when(data.since_ms)} UTC, ${data.eligible} contactable` +
    `${data.truncated ? `, first ${data.rows.length} shown` : ""}`;
  const tbody = $("#affected-rows tbody");
  tbody.replaceChildren();
  for (const r of data.rows) {
    const tr = el("tr");
    tr.dataset.sid = r.subscriber_id;
    tr.append(el("td", r.subscriber_id, "sid"), el("td", r.current_score.toFixed(2), "score"), el("td", r.cell_id ?? ""),
              el("td", r.uses), el("td", when(r.last_served_ms)), el("td", r.reasons.map((x) => x.text).join("; ")));
    tr.addEventListener("click", () => showSubscriber(r.subscriber_id).catch(showError));
    tbody.append(tr);
  }
}

async function downloadAffectedCsv() {
  if (!affectedPath) return;
  const resp = await api(affectedPath, { params: { ...affectedParams(), limit: 500, format: "csv" }, raw: true });
  saveBlob(await resp.blob(), "affected.csv");
}

function readFilters() {
  const f = {};
  for (const name of ["region", "segment", "min_score", "reason", "not_contacted_since"]) {
    const v = $(`#filters [name=${name}]`).value.trim();
    if (v) f[name] = v;
  }
  return f;
}

async function loadList(fresh) {
  if (fresh) { currentFilters = readFilters(); nextCursor = null; }
  const params = { ...currentFilters, limit: 25 };
  if (!fresh && nextCursor) params.cursor = nextCursor;
  const data = await api("at-risk", { params });
  const tbody = $("#at-risk tbody");
  if (fresh) tbody.replaceChildren();
  for (const r of data.rows) {
    const tr = el("tr");
    tr.dataset.sid = r.subscriber_id;
    const reasons = el("td");
    for (const x of r.reasons) { const s = el("span", x.text, "reason"); s.title = x.code; reasons.append(s); }
    tr.append(el("td", r.subscriber_id, "sid"), el("td", r.score.toFixed(2), "score"), el("td", when(r.at_risk_since_ms)),
              el("td", r.region ?? ""), el("td", r.segment ?? ""), reasons);
    tr.addEventListener("click", () => showSubscriber(r.subscriber_id).catch(showError));
    tbody.append(tr);
  }
  nextCursor = data.next_cursor;
  $("#next-page").hidden = !nextCursor;
  say(`${tbody.children.length} subscriber(s) shown${nextCursor ? ", more available" : ""}`);
}

async function showSubscriber(sid) {
  const d = await api(`subscribers/${encodeURIComponent(sid)}`);
  currentSubscriber = sid;
  $("#detail").hidden = false;
  $("#d-id").textContent = d.subscriber_id;
  $("#d-score").textContent = d.score.toFixed(2);
  $("#d-group").textContent = d.group;
  $("#d-suppressed").textContent = d.suppressed ? `not listed: ${d.suppressed}` : "contactable";
  $("#d-reasons").replaceChildren(...d.reasons.map((x) => el("li", x.text)));
  $("#d-history").replaceChildren(...d.history.map((h) => el("li", `${when(h.ts_ms)}  ${h.score.toFixed(2)}${h.at_risk ? " at risk" : ""}`)));
  $("#d-contacts").replaceChildren(...d.contacts.map((c) => el("li", `${when(c.ts_ms)} ${c.channel}: ${c.outcome} (${c.by})`)));
}

async function markContacted(ev) {
  ev.preventDefault();
  if (!currentSubscriber) return;
  await api("outreach", { method: "POST", body: {
    subscriber_id: currentSubscriber, channel: $("#c-channel").value, outcome: $("#c-outcome").value } });
  const sid = currentSubscriber;
  await showSubscriber(sid);
  await loadList(true);
  say(`Recorded contact with ${sid}; suppressed from the list for the contact-fatigue window`);
}

async function downloadCsv() {
  const resp = await api("at-risk", { params: { ...readFilters(), limit: 500, format: "csv" }, raw: true });
  saveBlob(await resp.blob(), "at-risk.csv");
}

function saveBlob(blob, name) {
  const a = el("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

function showError(err) {
  if (err.status === 401) return;
  const hint = err.status === 429 ? " (slow down)" : "";
  say(`${err.message}${hint}`, true);
}

document.addEventListener("DOMContentLoaded", () => {
  $("#login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("#token").value.trim());
    $("#token").value = "";
    signIn().catch((err) => { if (err.status !== 401) signOut(err.message); });
  });
  $("#logout").addEventListener("click", () => signOut(""));
  $("#filters").addEventListener("submit", (ev) => { ev.preventDefault(); loadList(true).catch(showError); });
  $("#next-page").addEventListener("click", () => loadList(false).catch(showError));
  $("#csv").addEventListener("click", () => downloadCsv().catch(showError));
  $("#contact-form").addEventListener("submit", (ev) => markContacted(ev).catch(showError));
  $("#affected-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (affectedPath) showAffected(affectedPath, $("#a-what").textContent).catch(showError);
  });
  $("#a-csv").addEventListener("click", () => downloadAffectedCsv().catch(showError));
  if (sessionStorage.getItem(TOKEN_KEY)) signIn().catch(() => {});
});
