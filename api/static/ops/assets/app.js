// The operator dashboard: no framework, no CDN. The admin key lives in this tab's
// sessionStorage and goes out only in the Authorization header of fetch requests; live
// updates are Server-Sent Events read from a fetch response (EventSource cannot send a header).
"use strict";

const KEY = "mohallamart-admin-key";
const $ = (sel) => document.querySelector(sel);
const history = new Map(); // role -> recent lag figures, for the sparklines
const HISTORY = 90;
let streamAbort = null;

function key() { return sessionStorage.getItem(KEY); }

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function svg(tag, attrs = {}, text) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

const fmt = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-IN"));
const rupees = (paise) => "₹" + (paise / 100).toLocaleString("en-IN", { minimumFractionDigits: 2, maximumFractionDigits: 2 });

class AuthError extends Error {}

async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${key()}`, ...(options.headers || {}) };
  const res = await fetch(path, { ...options, headers });
  if (res.status === 401 || res.status === 403) {
    const body = await res.json().catch(() => ({}));
    throw new AuthError(body.detail || body.title || `HTTP ${res.status}`);
  }
  const body = await res.json().catch(() => null);
  if (!res.ok) throw new Error((body && (body.detail || body.title)) || `HTTP ${res.status}`);
  return body;
}

// --- sign in ------------------------------------------------------------------------------------
function showLogin(message) {
  if (streamAbort) streamAbort.abort();
  $("#board").hidden = true;
  $("#forget").hidden = true;
  $("#login").hidden = false;
  $("#login-error").textContent = message || "";
  setLive("off", "offline");
}

async function open() {
  try {
    await api("/v1/ops/overview");
  } catch (e) {
    if (e instanceof AuthError) { sessionStorage.removeItem(KEY); showLogin(`The key was refused: ${e.message}`); return; }
    $("#errors").textContent = `The overview could not be read: ${e.message}`;
  }
  $("#login").hidden = true;
  $("#board").hidden = false;
  $("#forget").hidden = false;
  stream();
  loadDeadLetters();
  loadCharts();
}

$("#key-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(KEY, $("#key").value.trim());
  $("#key").value = "";
  open();
});

$("#forget").addEventListener("click", () => { sessionStorage.removeItem(KEY); showLogin("The key is forgotten."); });

// --- live overview (SSE over fetch) ---------------------------------------------------------------
function setLive(kind, text) {
  const b = $("#live");
  b.className = `badge ${kind}`;
  b.textContent = text;
}

async function stream() {
  if (streamAbort) streamAbort.abort();
  const abort = (streamAbort = new AbortController());
  let delay = 1000;
  while (!abort.signal.aborted) {
    try {
      const res = await fetch("/v1/ops/stream", { headers: { Authorization: `Bearer ${key()}` }, signal: abort.signal });
      if (res.status === 401 || res.status === 403) { sessionStorage.removeItem(KEY); showLogin("The key was refused."); return; }
      if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
      setLive("on", "live");
      delay = 1000;
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const frame = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          let event = "message";
          const data = [];
          for (const line of frame.split("\n")) {
            if (line.startsWith("event:")) event = line.slice(6).trim();
            else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
          }
          if (event === "overview" && data.length) render(JSON.parse(data.join("\n")));
          if (event === "error") { sessionStorage.removeItem(KEY); showLogin("The key is no longer accepted."); return; }
        }
      }
    } catch (e) {
      if (abort.signal.aborted) return;
    }
    setLive("wait", "reconnecting");
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 15000);
  }
}

function sparkline(values) {
  const w = 160, h = 28;
  const s = svg("svg", { viewBox: `0 0 ${w} ${h}`, width: w, height: h, "aria-hidden": "true" });
  if (values.length < 2) return s;
  const max = Math.max(1, ...values);
  const step = w / (HISTORY - 1);
  const x0 = w - step * (values.length - 1);
  const pts = values.map((v, i) => `${(x0 + i * step).toFixed(1)},${(h - 2 - (v / max) * (h - 4)).toFixed(1)}`);
  s.append(svg("polyline", { class: "spark", points: pts.join(" ") }));
  return s;
}

function render(snap) {
  $("#at").textContent = `as of ${new Date(snap.at).toLocaleTimeString()}`;
  $("#errors").textContent = (snap.errors || []).join("; ");
  // dependencies
  const deps = $("#deps");
  deps.replaceChildren(...Object.entries(snap.dependencies || {}).map(([name, d]) =>
    el("li", { class: d.ok ? "up" : "down", "data-dependency": name, title: d.ok ? `${d.ms} ms` : d.error },
      `${name} ${d.ok ? "up" : "DOWN"}`)));
  // dead letters
  const dl = snap.dead_letters || {};
  $("#dlq-pending").textContent = fmt(dl.pending);
  $("#dlq-records").textContent = fmt(dl.records);
  $("#dlq-settled").textContent = fmt(dl.settled);
  // rebuilds
  const rb = snap.rebuilds || [];
  $("#rebuilds").replaceChildren(...(rb.length ? rb.map((r) => {
    const share = r.live_records ? Math.min(1, r.records / r.live_records) : 1;
    const bar = el("div", { class: "progress", role: "progressbar", "aria-valuenow": Math.round(share * 100) }, el("div"));
    bar.firstChild.style.width = `${(share * 100).toFixed(1)}%`;
    return el("div", { "data-schema": r.schema },
      el("p", {}, el("b", { text: r.schema }), ` (${r.kind}${r.until ? ", as of " + r.until : ""}): `,
        `${fmt(r.records)} of ${fmt(r.live_records)} records, ${fmt(r.behind)} behind`,
        r.per_s ? `, ${fmt(r.per_s)} records/s` : ""),
      bar);
  }) : [el("p", { class: "muted", text: "none" })]));
  // roles
  const body = $("#lag tbody");
  body.replaceChildren(...(snap.roles || []).map((r) => {
    const h = history.get(r.role) || [];
    h.push(r.lag);
    while (h.length > HISTORY) h.shift();
    history.set(r.role, h);
    const parts = el("details", {}, el("summary", { text: `${r.partitions.length} partitions` }),
      el("table", {}, el("tbody", {}, ...r.partitions.map((p) =>
        el("tr", {}, el("td", { text: `${p.topic}/${p.partition}` }), el("td", { class: "num", text: `${fmt(p.committed)} / ${fmt(p.end)}` }),
          el("td", { class: "num", text: `lag ${fmt(p.lag)}` }))))));
    return el("tr", { "data-role": r.role },
      el("td", { text: r.role }), el("td", { class: "num lag", text: fmt(r.lag) }),
      el("td", { class: "num", text: fmt(r.consumed_per_s) }), el("td", {}, sparkline(h)), el("td", {}, parts));
  }));
  // topics
  $("#topics tbody").replaceChildren(...(snap.topics || []).map((t) =>
    el("tr", { "data-topic": t.topic }, el("td", { text: t.topic }), el("td", { class: "num", text: fmt(t.records) }),
      el("td", { class: "num", text: fmt(t.per_s) }))));
}

// --- dead letters -----------------------------------------------------------------------------
let dlqLoads = 0; // only the latest listing is shown (an earlier, slower one is dropped)
const redrives = new Map(); // event id -> the button and state of a redrive asked for

async function loadDeadLetters() {
  const mine = ++dlqLoads;
  const note = $("#dlq-note");
  note.textContent = "reading the dead-letter topics…";
  try {
    const body = await api("/v1/ops/dead-letters?status=pending&limit=100");
    if (mine !== dlqLoads) return;
    note.textContent = body.total > body.dead_letters.length
      ? `the newest ${body.dead_letters.length} of ${fmt(body.total)} pending` : `${fmt(body.total)} pending`;
    $("#dlq tbody").replaceChildren(...body.dead_letters.map((d) => {
      // a redrive under way (or done) keeps its button and state across a new listing
      let { button, state } = redrives.get(d.event_id) || {};
      if (!button) {
        button = el("button", { type: "button", class: "redrive", text: "Redrive" });
        if (!d.event_id) { button.disabled = true; button.title = "no event id (undecodable): use mohallamart dlq redrive --all"; }
        state = el("span", { class: "state" });
        const mine = { button, state };
        button.addEventListener("click", () => { redrives.set(d.event_id, mine); redrive(d.event_id, button, state); });
      }
      return el("tr", { "data-event-id": d.event_id },
        el("td", { text: d.first_failure }), el("td", { text: d.event_type }),
        el("td", {}, el("a", { href: "#trace-panel", class: "trace-link", text: d.event_id })),
        el("td", { text: d.stage }), el("td", { text: d.error }), el("td", { class: "num", text: d.redrive_count }),
        el("td", {}, button, " ", state));
    }));
    for (const a of document.querySelectorAll("#dlq .trace-link")) {
      a.addEventListener("click", () => { $("#trace-id").value = a.textContent; traceEvent(a.textContent); });
    }
  } catch (e) {
    if (e instanceof AuthError) return showLogin(e.message);
    if (mine === dlqLoads) note.textContent = `The dead letters could not be read: ${e.message}`;
  }
}

$("#dlq-refresh").addEventListener("click", loadDeadLetters);

async function redrive(eventId, button, state) {
  button.disabled = true;
  state.className = "state";
  state.textContent = "redriving…";
  let sent;
  try {
    const r = await api("/v1/ops/dead-letters/redrive", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ event_ids: [eventId] }),
    });
    sent = (r.sent || []).find((x) => x.event_id === eventId);
    if (!sent) {
      state.textContent = r.superseded ? "superseded: a newer version is applied, not sent" : "not pending any more";
      state.className = "state settled";
      return;
    }
  } catch (e) {
    state.textContent = `redrive failed: ${e.message}`;
    state.className = "state failed";
    button.disabled = false;
    return;
  }
  // settled once the failing stage's role has committed past the copy sent back to it; then
  // either a new dead letter names the event (failed again) or it went through
  const role = (sent.stage || "").split("/")[0];
  state.textContent = `redriven to ${sent.topic}/${sent.partition}@${sent.offset}; waiting for ${role}…`;
  const until = Date.now() + 120000;
  let consumed = false;
  while (!consumed && Date.now() < until) {
    await new Promise((r) => setTimeout(r, 1000));
    try {
      const o = await api("/v1/ops/overview");
      const r = (o.roles || []).find((x) => x.role === role);
      const p = r && r.partitions.find((x) => x.topic === sent.topic && x.partition === sent.partition);
      consumed = Boolean(p && p.committed > sent.offset);
    } catch (e) { /* tried again */ }
  }
  if (!consumed) {
    state.textContent = `redriven; ${role} has not consumed it within two minutes (see its lag)`;
    return;
  }
  try {
    const again = await api("/v1/ops/dead-letters?status=pending&limit=1000");
    if (again.dead_letters.some((d) => d.event_id === eventId)) {
      state.textContent = "failed again: dead-lettered once more";
      state.className = "state failed";
      return;
    }
    const t = await api(`/v1/events/${eventId}/trace`);
    const projected = t.hops.find((h) => h.hop === "projected");
    state.textContent = projected ? `settled: ${projected.state}` : `settled: handled by ${role}`;
    state.className = "state settled";
  } catch (e) {
    state.textContent = `consumed by ${role}; its outcome could not be read: ${e.message}`;
  }
}

// --- trace ------------------------------------------------------------------------------------
const HOP_KEYS = ["hop", "at", "by"];

async function traceEvent(id) {
  const list = $("#trace");
  const head = $("#trace-head");
  list.replaceChildren();
  head.textContent = "tracing…";
  try {
    const t = await api(`/v1/events/${encodeURIComponent(id.trim())}/trace`);
    head.textContent = `${t.type} ${t.event_id}, occurred ${t.occurred_at}, trace ${t.trace_id}, from ${t.source}`;
    list.replaceChildren(...t.hops.map((h) => {
      const rest = Object.entries(h).filter(([k, v]) => !HOP_KEYS.includes(k) && v !== null && v !== undefined)
        .map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`).join(", ");
      return el("li", { "data-hop": h.hop }, el("b", { text: h.hop }), ` ${h.by || ""} `,
        el("span", { class: "muted", text: h.at || "" }), el("br"), el("code", { text: rest }));
    }));
  } catch (e) {
    if (e instanceof AuthError) return showLogin(e.message);
    head.textContent = `No trace: ${e.message}`;
  }
}

$("#trace-form").addEventListener("submit", (ev) => { ev.preventDefault(); traceEvent($("#trace-id").value); });

// --- analytics charts -------------------------------------------------------------------------
function barChart(figure, items, label, value, title) {
  for (const old of figure.querySelectorAll("svg, p")) old.remove();
  if (!items.length) { figure.append(el("p", { class: "muted", text: "no window yet" })); return; }
  const w = 640, h = 220, pad = 28, top = 16;
  const s = svg("svg", { viewBox: `0 0 ${w} ${h}`, role: "img" });
  const max = Math.max(1, ...items.map((i) => i.value));
  const slot = (w - 2 * pad) / items.length;
  const bw = Math.min(64, Math.max(2, slot * 0.7));
  items.forEach((it, n) => {
    const bh = ((h - pad - top) * it.value) / max;
    const x = pad + n * slot + (slot - bw) / 2;
    const rect = svg("rect", { class: "bar", x: x.toFixed(1), y: (h - pad - bh).toFixed(1), width: bw.toFixed(1), height: Math.max(0, bh).toFixed(1),
      "data-label": it.label, "data-value": it.value });
    rect.append(svg("title", {}, `${it.label}: ${title(it)}`));
    s.append(rect);
    if (items.length <= 24) s.append(svg("text", { class: "value", x: (x + bw / 2).toFixed(1), y: (h - pad - bh - 3).toFixed(1), "text-anchor": "middle" }, value(it)));
    if (items.length <= 12 || n % Math.ceil(items.length / 12) === 0) s.append(svg("text", { class: "label", x: (x + bw / 2).toFixed(1), y: h - pad + 12, "text-anchor": "middle" }, label(it)));
  });
  s.append(svg("line", { x1: pad, x2: w - pad, y1: h - pad, y2: h - pad, stroke: "#999" }));
  figure.append(s);
}

async function revenue(shop, hours) {
  const fig = $("#revenue-chart");
  const to = new Date();
  const from = new Date(to.getTime() - hours * 3600 * 1000);
  try {
    const body = await api(`/v1/analytics/shops/${encodeURIComponent(shop)}/sales?window=1h&from=${encodeURIComponent(from.toISOString())}&to=${encodeURIComponent(to.toISOString())}`);
    fig.querySelector("figcaption").textContent = `${shop}: revenue per hour (${body.zone} hours), the last ${hours} hours`;
    barChart(fig, body.windows.map((r) => ({ label: r.window_start.slice(11, 16), value: r.revenue_paise, orders: r.orders, start: r.window_start })),
      (i) => i.label, (i) => rupees(i.value), (i) => `${rupees(i.value)} from ${i.orders} orders (hour from ${i.start})`);
  } catch (e) {
    if (e instanceof AuthError) return showLogin(e.message);
    fig.querySelector("figcaption").textContent = `The revenue could not be read: ${e.message}`;
  }
}

$("#revenue-form").addEventListener("submit", (ev) => { ev.preventDefault(); revenue($("#revenue-shop").value.trim(), Number($("#revenue-hours").value)); });

async function loadCharts() {
  try {
    const t = await api("/v1/analytics/trending?limit=10");
    barChart($("#trending-chart"), t.products.map((p) => ({ label: p.product_id, value: p.units, orders: p.orders })),
      (i) => "…" + i.label.slice(-7), (i) => fmt(i.value), (i) => `${fmt(i.value)} units in ${fmt(i.orders)} orders`);
  } catch (e) {
    if (e instanceof AuthError) return showLogin(e.message);
    $("#trending-chart figcaption").textContent = `Trending could not be read: ${e.message}`;
  }
  try {
    const f = await api("/v1/analytics/funnel");
    const steps = [];
    for (const d of f.days) {
      steps.push({ label: `${d.day.slice(5)} sessions`, value: d.sessions || 0, d });
      steps.push({ label: "searched", value: d.searched_sessions || 0, d });
      steps.push({ label: "bought", value: d.converted_sessions || 0, d });
    }
    barChart($("#funnel-chart"), steps, (i) => i.label, (i) => fmt(i.value),
      (i) => `${i.d.day}: search conversion ${i.d.search_conversion ?? "–"}, cart abandonment ${i.d.cart_abandonment ?? "–"}`);
  } catch (e) {
    if (e instanceof AuthError) return showLogin(e.message);
    $("#funnel-chart figcaption").textContent = `The funnel could not be read: ${e.message}`;
  }
  const shop = $("#revenue-shop").value.trim();
  if (shop) revenue(shop, Number($("#revenue-hours").value));
}

$("#analytics-refresh").addEventListener("click", loadCharts);

if (key()) open(); else showLogin();
