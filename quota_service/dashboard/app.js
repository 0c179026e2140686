// quota-service dashboard. Talks to the service's own JSON API (the gRPC API in Connect's
// unary JSON form) and reads live events from /events (Server-Sent Events read with fetch,
// because EventSource cannot send the Authorization header). The token lives in this tab's
// sessionStorage only; no cookies. Every value is written with textContent, never as HTML.
"use strict";

const TOKEN_KEY = "quota.dashboard.token";
const charts = window.QuotaCharts;

const state = {
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  role: "",
  view: "",
  feed: [], // live threshold / stop events, newest first
  lastEventId: "",
  lastRefresh: 0,
  refreshing: false,
  policy: null,
};

// -- small DOM helpers ------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}
const $ = (id) => document.getElementById(id);

function usd(value) {
  const v = Number(value || 0);
  const digits = v !== 0 && Math.abs(v) < 1 ? 4 : 2;
  return v.toLocaleString(undefined, { style: "currency", currency: "USD", minimumFractionDigits: digits, maximumFractionDigits: digits });
}
function usdShort(value) {
  const v = Number(value || 0);
  if (v === 0) return "$0";
  return v >= 1 ? `$${v.toFixed(2)}` : `$${Number(v.toPrecision(2))}`;
}
function pct(ratio) {
  return `${(Number(ratio || 0) * 100).toLocaleString(undefined, { maximumFractionDigits: 1 })} %`;
}
function amount(metric, value) {
  if (metric === "cost_usd") return usd(value);
  return Number(value || 0).toLocaleString(undefined, { maximumFractionDigits: 2 });
}
function when(unixSeconds) {
  const s = Number(unixSeconds || 0);
  return s ? new Date(s * 1000).toLocaleString() : "never";
}
function whenMs(ms) {
  return new Date(Number(ms || 0)).toLocaleString();
}
function timeMs(ms) {
  return new Date(Number(ms || 0)).toLocaleTimeString();
}
function badge(decision) {
  const name = String(decision || "").replace("DECISION_", "");
  if (!name || name === "UNSPECIFIED") return null;
  return h("span", { class: `badge ${name.toLowerCase()}` }, name);
}
function toast(text, bad = false) {
  const el = $("toast");
  el.textContent = text;
  el.className = bad ? "show bad" : "show";
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (el.className = ""), 4000);
}

// -- the API ------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(code, message, status) {
    super(message);
    this.code = code;
    this.status = status;
  }
}

async function rpc(service, method, body = {}) {
  const reply = await fetch(`/quota.v1.${service}/${method}`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${state.token}` },
    body: JSON.stringify(body),
  });
  const data = await reply.json().catch(() => ({}));
  if (!reply.ok) {
    if (reply.status === 401) logout("Your token was refused.");
    throw new ApiError(data.code || "unknown", data.message || reply.statusText, reply.status);
  }
  return data;
}
const admin = (method, body) => rpc("AdminService", method, body);

async function act(label, fn) {
  try {
    await fn();
    toast(`${label}: done`);
    await refresh(true);
  } catch (err) {
    toast(`${label} failed: ${err.code || ""} ${err.message}`, true);
  }
}

function confirmWithReason(title, text) {
  return new Promise((resolve) => {
    const dialog = $("confirm");
    $("confirm-title").textContent = title;
    $("confirm-text").textContent = text;
    $("confirm-reason").value = "";
    const done = (value) => {
      $("confirm-form").onsubmit = null;
      $("confirm-cancel").onclick = null;
      dialog.close();
      resolve(value);
    };
    $("confirm-form").onsubmit = (event) => {
      event.preventDefault();
      const reason = $("confirm-reason").value.trim();
      if (reason) done(reason);
    };
    $("confirm-cancel").onclick = () => done(null);
    dialog.oncancel = () => done(null);
    dialog.showModal();
    $("confirm-reason").focus();
  });
}

// -- session ----------------------------------------------------------------------------------

async function login(token) {
  const reply = await fetch("/session", { headers: { Authorization: `Bearer ${token}` } });
  const data = await reply.json().catch(() => ({}));
  if (!reply.ok) throw new ApiError(data.code || "unknown", data.message || reply.statusText, reply.status);
  state.token = token;
  state.role = data.role;
  sessionStorage.setItem(TOKEN_KEY, token);
}

function logout(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = "";
  state.role = "";
  state.feed = [];
  state.feedLoaded = false;
  state.lastEventId = "";
  state.policy = null;
  stream.stop();
  showLogin(message || "");
}

function showLogin(message) {
  $("login").hidden = false;
  $("nav").hidden = true;
  $("session").hidden = true;
  $("view").replaceChildren();
  $("login-error").textContent = message;
  $("token").focus();
}

function showApp() {
  $("login").hidden = true;
  $("nav").hidden = false;
  $("session").hidden = false;
  $("role").textContent = state.role;
  document.body.dataset.role = state.role;
  stream.start();
  route();
}

const isAdmin = () => state.role === "admin";

// -- live events over SSE (fetch + a text/event-stream parser, reconnecting with backoff) -----------

const stream = {
  controller: null,
  backoff: 500,
  running: false,
  start() {
    if (this.running) return;
    this.running = true;
    this.loop();
  },
  stop() {
    this.running = false;
    if (this.controller) this.controller.abort();
    setLive(false);
  },
  async loop() {
    while (this.running) {
      try {
        await this.once();
      } catch (err) {
        if (!this.running) return;
      }
      setLive(false);
      if (!this.running) return;
      await new Promise((r) => setTimeout(r, this.backoff));
      this.backoff = Math.min(this.backoff * 2, 10000);
    }
  },
  async once() {
    this.controller = new AbortController();
    const headers = { Authorization: `Bearer ${state.token}`, Accept: "text/event-stream" };
    if (state.lastEventId) headers["Last-Event-ID"] = state.lastEventId;
    const reply = await fetch("/events?kinds=THRESHOLD_CROSSED,STOP_CHANGED,ADMIN_CHANGE", {
      headers,
      signal: this.controller.signal,
      cache: "no-store",
    });
    if (reply.status === 401) return logout("Your token was refused.");
    if (!reply.ok || !reply.body) throw new Error(`events: HTTP ${reply.status}`);
    const reader = reply.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let watchdog = null;
    const alive = () => {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => this.controller.abort(), 5000); // no tick for 5 s: reconnect
    };
    alive();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buffer += value;
        let end;
        while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
          alive();
          this.dispatch(parseEvent(block));
        }
      }
    } finally {
      clearTimeout(watchdog);
    }
  },
  dispatch(message) {
    if (!message) return;
    setLive(true);
    this.backoff = 500;
    if (message.id) state.lastEventId = message.id;
    if (message.event === "tick") return refresh(false);
    if (message.event === "reset") return refresh(true);
    if (!message.data) return;
    let event;
    try {
      event = JSON.parse(message.data);
    } catch {
      return;
    }
    if (event.kind === "THRESHOLD_CROSSED" || event.kind === "STOP_CHANGED") {
      state.feed.unshift(event);
      state.feed.length = Math.min(state.feed.length, 100);
    }
    // A burst of events redraws once, a quarter of a second later.
    if (!this.soon) this.soon = setTimeout(() => { this.soon = null; refresh(true); }, 250);
  },
};

function parseEvent(block) {
  const message = { event: "message", data: "", id: "" };
  let any = false;
  for (const line of block.split(/\r?\n/)) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") message.event = value;
    else if (field === "data") message.data += (message.data ? "\n" : "") + value;
    else if (field === "id") message.id = value;
    else continue;
    any = true;
  }
  return any ? message : null;
}

function setLive(on) {
  const el = $("live");
  el.className = on ? "live on" : "live off";
  el.textContent = on ? "live" : "reconnecting…";
}

// -- routing --------------------------------------------------------------------------------

const views = {};

function route() {
  if (!state.token) return;
  const [, name = "overview", ...rest] = (location.hash || "#/overview").split("/");
  const view = views[name] ? name : "overview";
  state.view = view;
  state.arg = decodeURIComponent(rest.join("/"));
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.view === view);
  $("view").replaceChildren(h("p", { class: "muted" }, "Loading…"));
  views[view].mount(state.arg);
  refresh(true);
}

// Redraw the current view's live data: on every SSE tick (at most once a second) and at once
// after an event or an action.
async function refresh(now) {
  const view = views[state.view];
  if (!view || !view.refresh) return;
  if (state.refreshing) {
    if (now) state.again = true; // one more round once this one ends
    return;
  }
  if (!now && Date.now() - state.lastRefresh < (view.every || 1000)) return;
  state.refreshing = true;
  state.lastRefresh = Date.now();
  try {
    await view.refresh(state.arg);
  } catch (err) {
    if (err instanceof ApiError) toast(`${err.code}: ${err.message}`, true);
    else console.error(err);
  } finally {
    state.refreshing = false;
  }
  if (state.again) {
    state.again = false;
    refresh(true);
  }
}

function card(title, ...body) {
  return h("section", { class: "card" }, h("h2", {}, title), ...body);
}

function fill(id, ...children) {
  const el = $(id);
  if (el) el.replaceChildren(...children.flat(2).filter((c) => c !== null && c !== undefined && c !== false));
}

function limitRow(limit) {
  const max = Number(limit.max || 0);
  const used = Number(limit.used || 0);
  const held = Number(limit.held || 0);
  const ratio = Number(limit.ratio || 0);
  const warnAt = Number(limit.warnAt || 0);
  const blockAt = Number(limit.blockAt || 1);
  let stateName = "allow";
  if (limit.decision === "DENY" || ratio >= blockAt) stateName = "deny";
  else if (warnAt > 0 && ratio >= warnAt) stateName = "warn";
  const kind = String(limit.kind || "").replace("LIMIT_KIND_", "").toLowerCase().replace("_", " ");
  const label = `${limit.metric} per ${limit.window} (${kind}): ${amount(limit.metric, used)} used, ${amount(limit.metric, held)} held of ${amount(limit.metric, max)}`;
  return h(
    "div",
    { class: "limit", "data-metric": limit.metric, "data-window": limit.window, "data-kind": kind },
    h(
      "div",
      { class: "head" },
      h("span", {}, h("strong", {}, `${limit.metric} / ${limit.window}`), " ", h("span", { class: "muted" }, kind)),
      h(
        "span",
        {},
        h("span", { class: "used" }, amount(limit.metric, used)),
        held ? ` + ${amount(limit.metric, held)} held` : "",
        " of ",
        h("span", { class: "cap" }, amount(limit.metric, max)),
        ` · ${pct(ratio)} `,
        stateName !== "allow" ? badge(stateName.toUpperCase()) : null
      )
    ),
    charts.limitBar({ used, held, max, warnAt, blockAt: blockAt < 1 ? blockAt : 0, state: stateName, label }),
    h(
      "div",
      { class: "foot" },
      h("span", {}, warnAt > 0 ? `warn at ${pct(warnAt)} · block at ${pct(blockAt)}` : "denies above the cap"),
      h("span", {}, `resets ${when(limit.resetsAt)}`)
    )
  );
}

function stopLabel(stop) {
  return stop.scope === "GLOBAL" ? "everything (GLOBAL)" : `${stop.scope} ${stop.target}`;
}

// -- Overview -------------------------------------------------------------------------------

views.overview = {
  every: 1000,
  mount() {
    this.tops = null;
    this.slowAt = 0;
    $("view").replaceChildren(
      h("div", { id: "stop-banner" }),
      h(
        "div",
        { class: "grid" },
        card("Spend today", h("div", { id: "spend-today", class: "stat" }, "…"), h("div", { id: "spend-today-bar" })),
        card("Spend this month", h("div", { id: "spend-month", class: "stat" }, "…"), h("div", { id: "spend-month-note", class: "muted" })),
        h(
          "section",
          { class: "card" },
          h("div", { class: "toolbar" }, h("h2", {}, "Emergency stops"), isAdmin() ? h("button", { id: "stop-all", class: "danger", onclick: stopAll }, "Stop all") : null),
          h("div", { id: "stops" })
        )
      ),
      h(
        "div",
        { class: "grid two spaced" },
        card(
          "Answers per minute, last hour",
          h("div", { id: "answers-chart" }),
          h("div", { class: "legend" }, h("span", { class: "allow" }, "ALLOW"), h("span", { class: "warn" }, "WARN"), h("span", { class: "deny" }, "DENY"))
        ),
        card("Spend per minute, last hour", h("div", { id: "spend-chart" }))
      ),
      h(
        "div",
        { class: "grid spaced" },
        card("Top 10 today", h("div", { id: "top-day", class: "scroll" })),
        card("Top 10 this month", h("div", { id: "top-month", class: "scroll" })),
        card("Past the warn or block line", h("div", { id: "hot", class: "scroll" })),
        card("Live: thresholds and stops", h("ul", { id: "feed", class: "feed" }))
      )
    );
  },
  async refresh() {
    if (!state.feedLoaded) {
      state.feedLoaded = true;
      const recent = await admin("ListEvents", { kinds: ["THRESHOLD_CROSSED", "STOP_CHANGED"], sinceMs: String(Date.now() - 3600000), pageSize: 100 }).catch(() => null);
      if (recent) {
        const known = new Set(state.feed.map((e) => e.id));
        state.feed.push(...(recent.events || []).filter((e) => !known.has(e.id)));
        state.feed.sort((a, b) => Number(b.atMs) - Number(a.atMs));
      }
    }
    const [company, stops] = await Promise.all([admin("GetCompanyUsage"), admin("ListStops")]);
    // TopUsage scans Redis: ask again only when the company-wide counters moved (at most once
    // a second), else every 15 s; every 2 s when the policy has no company-wide cap to watch.
    const spendKey = JSON.stringify((company.limits || []).map((l) => [l.used, l.held]));
    const age = Date.now() - (this.topsAt || 0);
    const idle = (company.limits || []).length ? 15000 : 2000;
    if (!this.tops || (spendKey !== this.spendKey && age >= 1000) || age >= idle) {
      this.tops = await Promise.all([
        admin("TopUsage", { metric: "cost_usd", window: "day", n: 10 }),
        admin("TopUsage", { metric: "cost_usd", window: "month", n: 10 }),
        admin("TopUsage", { metric: "tokens", window: "day", n: 10 }),
      ]);
      this.topsAt = Date.now();
      this.spendKey = spendKey;
    }
    const [day, month, tokens] = this.tops;
    const dayCap = (company.limits || []).find((l) => l.metric === "cost_usd" && l.window === "day");
    const monthCap = (company.limits || []).find((l) => l.metric === "cost_usd" && l.window === "month");
    const daySpend = dayCap ? Number(dayCap.used) + Number(dayCap.held) : sum(day.entries);
    fill("spend-today", usd(daySpend), dayCap ? h("small", {}, ` of ${usd(dayCap.max)} company cap · ${pct(dayCap.ratio)}`) : h("small", {}, " (no company-wide daily cap)"));
    fill("spend-today-bar", dayCap ? limitRow(dayCap) : "");
    if (monthCap) {
      fill("spend-month", usd(Number(monthCap.used) + Number(monthCap.held)), h("small", {}, ` of ${usd(monthCap.max)} company cap · ${pct(monthCap.ratio)}`));
      fill("spend-month-note", limitRow(monthCap));
    } else {
      fill("spend-month", usd(sumUsed(month.entries)), h("small", {}, " top 10 subjects"));
      fill("spend-month-note", "No company-wide monthly cap in the policy; the sum of this month's top 10.");
    }
    renderStops(stops.stops || []);
    fill("top-day", topTable(day.entries || []));
    fill("top-month", topTable(month.entries || []));
    renderFeed();
    // The slower parts: the ledger's per-minute chart and the subjects near their lines.
    if (!this.slowBusy && (!this.slowAt || Date.now() - this.slowAt > 4000)) {
      this.slowAt = Date.now();
      this.slowBusy = true;
      // Not awaited: the live numbers above keep their one-second pace meanwhile.
      this.slow(day, month, tokens)
        .catch((err) => console.error(err))
        .finally(() => (this.slowBusy = false));
    }
  },
  async slow(day, month, tokens) {
    {
      // Candidates: the top spenders and token users, and whoever crossed a line lately.
      const crossed = state.feed.filter((e) => e.kind === "THRESHOLD_CROSSED" && e.subject).map((e) => e.subject);
      const names = [...new Set([...(day.entries || []), ...(tokens.entries || []), ...(month.entries || [])].map((e) => e.subject).concat(crossed))];
      const [activity, hot] = await Promise.all([admin("GetActivity", { minutes: 60 }).catch(() => null), hotSubjects(names)]);
      if (!$("answers-chart")) return; // the operator went to another view meanwhile
      if (activity) {
        const rows = activity.buckets.map((b) => ({ start: Number(b.start), allow: Number(b.allow), warn: Number(b.warn), deny: Number(b.deny), cost: Number(b.costUsd) }));
        const width = Math.max(280, $("answers-chart").clientWidth || 600);
        fill("answers-chart", charts.stackedColumns(rows, [{ key: "allow", colour: "var(--allow)" }, { key: "warn", colour: "var(--warn)" }, { key: "deny", colour: "var(--deny)" }], { width, yLabel: "answers per minute" }));
        fill("spend-chart", charts.columns(rows, "cost", "var(--accent)", usdShort, { width, yLabel: "spend per minute", floor: 0.01 }));
      } else {
        fill("answers-chart", h("p", { class: "muted" }, "No per-minute history: the ledger is off or not answering."));
        fill("spend-chart", h("p", { class: "muted" }, "No per-minute history: the ledger is off or not answering."));
      }
      fill("hot", hot);
    }
  },
};

function sum(entries) {
  return (entries || []).reduce((s, e) => s + Number(e.used || 0) + Number(e.held || 0), 0);
}
function sumUsed(entries) {
  return (entries || []).reduce((s, e) => s + Number(e.used || 0), 0);
}

function topTable(entries) {
  if (!entries.length) return h("p", { class: "muted" }, "No spend yet.");
  return h(
    "table",
    {},
    h("thead", {}, h("tr", {}, h("th", {}, "Subject"), h("th", { class: "num" }, "Spent"), h("th", { class: "num" }, "Held"))),
    h(
      "tbody",
      {},
      entries.map((e) =>
        h("tr", { "data-subject": e.subject }, h("td", {}, h("a", { href: `#/subject/${encodeURIComponent(e.subject)}` }, e.subject)), h("td", { class: "num" }, usd(e.used)), h("td", { class: "num" }, usd(e.held)))
      )
    )
  );
}

async function hotSubjects(names) {
  const found = [];
  const views = await Promise.all(names.slice(0, 20).map((s) => admin("GetSubject", { subject: s }).catch(() => null)));
  for (const view of views) {
    if (!view) continue;
    for (const limit of view.limits || []) {
      const ratio = Number(limit.ratio || 0);
      const warnAt = Number(limit.warnAt || 0);
      const blockAt = Number(limit.blockAt || 1);
      if ((warnAt > 0 && ratio >= warnAt) || ratio >= blockAt) found.push({ subject: view.subject, limit, level: ratio >= blockAt ? "DENY" : "WARN" });
    }
  }
  if (!found.length) return h("p", { class: "muted" }, "No subject among the top spenders, the top token users and the last hour's crossings is past a warn or block line.");
  found.sort((a, b) => Number(b.limit.ratio) - Number(a.limit.ratio));
  return h(
    "table",
    {},
    h("thead", {}, h("tr", {}, h("th", {}, "Subject"), h("th", {}, "Limit"), h("th", { class: "num" }, "Used"), h("th", {}, "State"))),
    h(
      "tbody",
      {},
      found.map((f) =>
        h(
          "tr",
          {},
          h("td", {}, h("a", { href: `#/subject/${encodeURIComponent(f.subject)}` }, f.subject)),
          h("td", {}, `${f.limit.metric} / ${f.limit.window}`),
          h("td", { class: "num" }, pct(f.limit.ratio)),
          h("td", {}, badge(f.level), f.level === "DENY" ? " blocked" : " warned")
        )
      )
    )
  );
}

function renderStops(stops) {
  const global = stops.find((s) => s.scope === "GLOBAL");
  fill(
    "stop-banner",
    global
      ? h(
          "div",
          { class: "banner", role: "alert" },
          h("strong", {}, "EMERGENCY STOP: every request is denied."),
          h("span", {}, `Reason: ${global.reason || "—"} · since ${when(global.createdAt)} · by ${global.createdBy || "?"}`)
        )
      : ""
  );
  const stopAllButton = $("stop-all");
  if (stopAllButton) stopAllButton.disabled = !!global;
  if (!stops.length) return fill("stops", h("p", { class: "muted", id: "no-stops" }, "None in force: requests are decided by the limits."));
  fill(
    "stops",
    h(
      "ul",
      { class: "feed" },
      stops.map((s) =>
        h(
          "li",
          { "data-scope": s.scope },
          h("span", { class: "badge stop" }, "STOP"),
          h("strong", {}, stopLabel(s)),
          h("span", { class: "muted" }, `${s.reason || ""} · ${when(s.createdAt)}`),
          isAdmin() ? h("button", { class: "small secondary resume", onclick: () => resume(s) }, "Resume") : null
        )
      )
    )
  );
}

async function stopAll() {
  const reason = await confirmWithReason("Stop all API calls?", "Every CheckAndReserve on every replica is denied (EMERGENCY_STOP) within a second, until you resume.");
  if (reason) await act("Stop all", () => admin("EmergencyStop", { scope: "GLOBAL", reason }));
}

async function resume(stop) {
  const reason = await confirmWithReason(`Resume ${stopLabel(stop)}?`, "Requests it covers are decided by their limits again.");
  if (reason) await act("Resume", () => admin("ResumeStop", { scope: stop.scope, target: stop.target || "", reason }));
}

function renderFeed() {
  const el = $("feed");
  if (!el) return;
  if (!state.feed.length) return el.replaceChildren(h("li", { class: "muted" }, "Waiting for threshold crossings and stops…"));
  el.replaceChildren(...state.feed.slice(0, 50).map(feedItem));
}

function feedItem(event) {
  if (event.kind === "STOP_CHANGED") {
    let detail = {};
    try {
      detail = JSON.parse(event.detail || "{}");
    } catch {
      detail = {};
    }
    const pulled = detail.action === "EmergencyStop";
    const stop = (pulled ? detail.after : detail.before) || detail.after || {};
    const target = !stop.scope ? detail.target || "a stop" : stop.scope === "GLOBAL" ? "everything (GLOBAL)" : `${stop.scope} ${stop.target || ""}`;
    return h(
      "li",
      {},
      h("time", {}, timeMs(event.atMs)),
      h("span", { class: pulled ? "badge stop" : "badge allow" }, pulled ? "STOP" : "RESUMED"),
      h("strong", {}, target),
      h("span", { class: "muted" }, detail.reason || stop.reason || "")
    );
  }
  const threshold = String(event.threshold || "").replace("THRESHOLD_", "");
  const level = threshold === "WARN" ? "WARN" : "DENY";
  const limit = event.limit || {};
  return h(
    "li",
    {},
    h("time", {}, timeMs(event.atMs)),
    badge(level),
    h("span", {}, `${threshold.toLowerCase()} line`),
    h("a", { href: `#/subject/${encodeURIComponent(event.subject || "")}` }, event.subject || "company"),
    h("span", { class: "muted" }, `${limit.metric || ""} / ${limit.window || ""} at ${pct(limit.ratio)}`)
  );
}

// -- Subject ----------------------------------------------------------------------------------

views.subject = {
  every: 2000,
  mount(subject) {
    const search = h(
      "form",
      { class: "inline", id: "subject-search", onsubmit: (e) => { e.preventDefault(); const v = $("subject-id").value.trim(); if (v) location.hash = `#/subject/${encodeURIComponent(v)}`; } },
      h("div", {}, h("label", { for: "subject-id" }, "Subject id"), h("input", { id: "subject-id", value: subject || "", required: true, autocomplete: "off" })),
      h("button", { type: "submit" }, "Show")
    );
    if (!subject) return $("view").replaceChildren(h("section", { class: "card" }, h("h1", {}, "Subject"), search));
    $("view").replaceChildren(
      h("section", { class: "card spaced-below" }, search),
      h(
        "div",
        { class: "grid two" },
        h("section", { class: "card" }, h("h1", { id: "subject-title" }, subject), h("div", { id: "subject-facts" }), h("div", { id: "subject-limits" })),
        h("div", { class: "stack" }, isAdmin() ? card("Actions", subjectActions(subject)) : null, card("Overrides", h("div", { id: "subject-overrides", class: "scroll" })), card("Stops covering it", h("div", { id: "subject-stops" })))
      ),
      h("div", { class: "spaced" }, card("Recent ledger records (24 h)", h("div", { id: "subject-records", class: "scroll" })))
    );
  },
  async refresh(subject) {
    if (!subject) return;
    const view = await admin("GetSubject", { subject });
    if (!state.policy) state.policy = await admin("DescribePolicy");
    fill(
      "subject-facts",
      h("dl", { class: "facts" }, h("dt", {}, "Tier"), h("dd", { id: "subject-tier" }, view.tier, view.tierAssigned ? "" : " (the default)"))
    );
    fill("subject-limits", (view.limits || []).map(limitRow));
    fill("subject-overrides", overridesTable(subject, view.overrides || []));
    const stops = (view.stops || []).filter((s) => s.scope === "GLOBAL" || s.scope === "SUBJECT" || s.scope === "TIER");
    fill(
      "subject-stops",
      stops.length
        ? h("ul", { class: "feed" }, stops.map((s) => h("li", {}, h("span", { class: "badge stop" }, "STOP"), stopLabel(s), h("span", { class: "muted" }, s.reason || ""))))
        : h("p", { class: "muted" }, "None.")
    );
    const tierSelect = $("set-tier");
    if (tierSelect && !tierSelect.options.length) {
      for (const t of state.policy.tiers || []) tierSelect.appendChild(h("option", { value: t.name }, `${t.displayName || t.name} (${t.name})`));
      tierSelect.value = view.tier;
    }
    const stopButton = $("subject-stop");
    if (stopButton) {
      const own = (view.stops || []).find((s) => s.scope === "SUBJECT" && s.target === subject);
      stopButton.textContent = own ? "Resume subject" : "Stop subject";
      stopButton.dataset.stopped = own ? "1" : "";
    }
    if (!this.recordsAt || Date.now() - this.recordsAt > 5000) {
      this.recordsAt = Date.now();
      fill("subject-records", recordsTable(await recentEvents(subject, 50)));
    }
  },
};

// The newest `count` events of a subject: ListEvents pages oldest first, so read forward from
// an hour ago (then a day ago when that is too few), at most a few pages, and keep the tail.
async function recentEvents(subject, count) {
  let events = [];
  for (const hours of [1, 24]) {
    events = [];
    let token = "";
    for (let page = 0; page < 10; page++) {
      const reply = await admin("ListEvents", { subject, sinceMs: String(Date.now() - hours * 3600000), pageSize: 500, pageToken: token }).catch(() => null);
      if (!reply) return [];
      events = events.concat(reply.events || []).slice(-count);
      token = reply.nextPageToken || "";
      if (!token) break;
    }
    if (events.length >= count) break;
  }
  return events.reverse();
}

function subjectActions(subject) {
  const value = (id) => $(id).value.trim();
  return h(
    "div",
    {},
    h(
      "form",
      { class: "inline", onsubmit: (e) => { e.preventDefault(); act("Set tier", () => admin("SetTier", { subject, tier: value("set-tier"), reason: "dashboard" })); } },
      h("div", {}, h("label", { for: "set-tier" }, "Tier"), h("select", { id: "set-tier" })),
      h("button", { type: "submit" }, "Set tier")
    ),
    h("h3", {}, "Override a cap"),
    h(
      "form",
      {
        class: "inline",
        id: "override-form",
        onsubmit: (e) => {
          e.preventDefault();
          act("Set override", () =>
            admin("SetOverride", { subject, metric: value("ov-metric"), window: value("ov-window"), max: Number(value("ov-max")), ttlSeconds: String(Math.round(Number(value("ov-ttl") || 0) * 3600)), reason: value("ov-reason") })
          );
        },
      },
      h("div", {}, h("label", { for: "ov-metric" }, "Metric"), h("select", { id: "ov-metric" }, ["tokens", "images", "cost_usd"].map((m) => h("option", { value: m }, m)))),
      h("div", {}, h("label", { for: "ov-window" }, "Window"), h("select", { id: "ov-window" }, ["day", "month", "hour", "minute"].map((w) => h("option", { value: w }, w)))),
      h("div", {}, h("label", { for: "ov-max" }, "New cap"), h("input", { id: "ov-max", type: "number", min: "0", step: "any", required: true })),
      h("div", {}, h("label", { for: "ov-ttl" }, "For hours (0: until deleted)"), h("input", { id: "ov-ttl", type: "number", min: "0", step: "any", value: "24" })),
      h("div", {}, h("label", { for: "ov-reason" }, "Reason"), h("input", { id: "ov-reason", required: true })),
      h("button", { type: "submit", id: "ov-submit" }, "Set override")
    ),
    h("h3", {}, "Usage and stops"),
    h(
      "div",
      { class: "actions start" },
      h(
        "button",
        {
          class: "secondary",
          id: "reset-usage",
          onclick: async () => {
            const reason = await confirmWithReason(`Reset ${subject}'s usage?`, "Every counter of the current windows goes back to zero (open reservations stay).");
            if (reason) await act("Reset usage", () => admin("ResetUsage", { subject, reason }));
          },
        },
        "Reset usage"
      ),
      h(
        "button",
        {
          class: "danger",
          id: "subject-stop",
          onclick: async (e) => {
            const stopped = e.target.dataset.stopped === "1";
            const reason = await confirmWithReason(stopped ? `Resume ${subject}?` : `Stop ${subject}?`, stopped ? "Its requests are decided by its limits again." : "Every request of this subject is denied (EMERGENCY_STOP) until resumed.");
            if (!reason) return;
            if (stopped) await act("Resume subject", () => admin("ResumeStop", { scope: "SUBJECT", target: subject, reason }));
            else await act("Stop subject", () => admin("EmergencyStop", { scope: "SUBJECT", target: subject, reason }));
          },
        },
        "Stop subject"
      )
    )
  );
}

function overridesTable(subject, overrides) {
  if (!overrides.length) return h("p", { class: "muted" }, "No overrides: the tier's caps apply.");
  return h(
    "table",
    {},
    h("thead", {}, h("tr", {}, h("th", {}, "Limit"), h("th", { class: "num" }, "Cap"), h("th", {}, "Expires"), h("th", {}, "Reason"), isAdmin() ? h("th", {}, "") : null)),
    h(
      "tbody",
      {},
      overrides.map((o) =>
        h(
          "tr",
          { "data-override": `${o.metric}/${o.window}` },
          h("td", {}, `${o.metric} / ${o.window}`),
          h("td", { class: "num" }, amount(o.metric, o.max)),
          h("td", {}, Number(o.expiresAt) ? when(o.expiresAt) : "never"),
          h("td", {}, o.reason || ""),
          isAdmin() ? h("td", {}, h("button", { class: "small secondary", onclick: () => act("Delete override", () => admin("DeleteOverride", { subject, metric: o.metric, window: o.window })) }, "Delete")) : null
        )
      )
    )
  );
}

function recordsTable(events) {
  if (!events.length) return h("p", { class: "muted" }, "No records in the last 24 hours.");
  // data-label: on a phone each record is a block of labelled lines (style.css, table.records)
  const cell = (label, attrs, ...children) => h("td", { ...attrs, "data-label": label }, ...children);
  return h(
    "table",
    { class: "records" },
    h("thead", {}, h("tr", {}, h("th", {}, "When"), h("th", {}, "Kind"), h("th", {}, "Feature"), h("th", {}, "Model"), h("th", { class: "num" }, "Cost"), h("th", {}, "Answer"))),
    h(
      "tbody",
      {},
      events.map((e) =>
        h(
          "tr",
          {},
          cell("When", {}, whenMs(e.atMs)),
          cell("Kind", {}, e.kind),
          cell("Feature", {}, e.feature || ""),
          cell("Model", {}, e.provider ? `${e.provider}/${e.model}` : ""),
          cell("Cost", { class: "num" }, e.costUsd ? usd(e.costUsd) : ""),
          cell("Answer", {}, badge(e.decision), e.reason && e.reason !== "REASON_UNSPECIFIED" ? ` ${e.reason}` : "")
        )
      )
    )
  );
}

// -- Policy ---------------------------------------------------------------------------------

views.policy = {
  every: 5000,
  mount() {
    $("view").replaceChildren(
      h(
        "div",
        { class: "grid two" },
        h(
          "section",
          { class: "card" },
          h("div", { class: "toolbar" }, h("h2", {}, "Policy in force"), isAdmin() ? h("button", { class: "secondary", id: "policy-reload", onclick: () => act("Reload policies", () => admin("ReloadPolicies")) }, "Reload now") : null),
          h("div", { id: "policy-status" })
        ),
        card("Company-wide caps", h("div", { id: "policy-global", class: "scroll" }))
      ),
      h(
        "div",
        { class: "grid two spaced" },
        card("Last change", h("div", { id: "policy-last-change", class: "scroll" })),
        card("Shadow policy", h("div", { id: "policy-shadow", class: "scroll" }))
      ),
      h("div", { class: "spaced" }, card("Tiers and their limits", h("div", { id: "policy-tiers", class: "scroll" }))),
      h("div", { class: "spaced" }, card("Prices", h("div", { id: "policy-prices", class: "scroll" })))
    );
  },
  async refresh() {
    const [policy, live] = await Promise.all([admin("DescribePolicy"), admin("GetPolicyStatus")]);
    state.policy = policy;
    const status = policy.status || {};
    fill("policy-last-change", lastChangeView(status.lastChange));
    fill("policy-shadow", shadowView(live.shadow));
    fill(
      "policy-status",
      h(
        "dl",
        { class: "facts" },
        h("dt", {}, "Version"),
        h("dd", { class: "mono", id: "policy-version" }, status.version),
        h("dt", {}, "Loaded at"),
        h("dd", {}, when(status.loadedAt)),
        h("dt", {}, "Files"),
        h("dd", {}, (status.files || []).map((f) => h("div", { class: "mono" }, f))),
        h("dt", {}, "Default tier"),
        h("dd", {}, status.defaultTier),
        h("dt", {}, "Timezone"),
        h("dd", {}, policy.timezone),
        h("dt", {}, "Unpriced models"),
        h("dd", {}, policy.unpriced),
        h("dt", {}, "Last reload error"),
        h("dd", { id: "policy-error" }, status.lastError ? [h("span", { class: "badge deny" }, "ERROR"), " ", h("pre", { class: "mono error wrap" }, status.lastError), h("span", { class: "muted" }, `at ${when(status.lastErrorAt)}; the version above stays in force`)] : "none")
      )
    );
    fill("policy-global", rulesTable(policy.globalLimits || []));
    fill(
      "policy-tiers",
      (policy.tiers || []).map((t) =>
        h(
          "div",
          { "data-tier": t.name },
          h("h3", {}, `${t.displayName || t.name} `, h("span", { class: "muted mono" }, t.name), t.name === status.defaultTier ? h("span", { class: "muted" }, " · default") : ""),
          h("p", { class: "muted" }, `Features: ${(t.features || []).join(", ")} · on store error: ${t.onStoreError} · reservations expire after ${t.reservationTtlSeconds} s`),
          rulesTable([...(t.limits || []), ...(t.hardStops || [])])
        )
      )
    );
    fill(
      "policy-prices",
      h(
        "table",
        {},
        h("thead", {}, h("tr", {}, h("th", {}, "Provider/model"), h("th", {}, "Metric"), h("th", { class: "num" }, "USD per unit"), h("th", { class: "num" }, "per 1M tokens"))),
        h(
          "tbody",
          {},
          (policy.prices || []).map((p) =>
            h("tr", {}, h("td", { class: "mono" }, p.pattern), h("td", {}, p.metric), h("td", { class: "num" }, `$${p.usdPerUnit}`), h("td", { class: "num" }, p.metric === "tokens" ? `$${(Number(p.usdPerUnit) * 1e6).toFixed(2)}` : "—"))
          )
        )
      )
    );
  },
};

// What the last reload swapped in changed (GetPolicyStatus.last_change), per tier.
function lastChangeView(change) {
  if (!change || !change.diff) return h("p", { class: "muted", id: "policy-no-change" }, "No reload has changed the policy since the service started.");
  const diff = change.diff;
  const rows = diff.changes || [];
  return h(
    "div",
    {},
    h("p", { id: "policy-change-summary" }, h("span", { class: "muted" }, `${when(change.at)} · `), h("span", { class: "mono" }, `${diff.oldVersion} → ${diff.newVersion}`), ` · ${rows.length} change${rows.length === 1 ? "" : "s"}`),
    rows.length
      ? h(
          "table",
          { class: "changes" },
          h("thead", {}, h("tr", {}, h("th", {}, "Tier"), h("th", {}, "What"), h("th", {}, "Before"), h("th", {}, "After"))),
          h(
            "tbody",
            {},
            rows.map((c) =>
              h(
                "tr",
                { class: `change ${c.change}` },
                h("td", {}, c.tier || h("span", { class: "muted" }, "policy-wide")),
                h("td", {}, `${c.category.replace("_", " ")} `, h("span", { class: "mono" }, c.key)),
                h("td", { class: "num" }, c.shownBefore),
                h("td", { class: "num" }, c.shownAfter)
              )
            )
          )
        )
      : h("p", { class: "muted" }, "The files changed; nothing the engine decides did.")
  );
}

// The shadow policy's divergences on this replica (GetPolicyStatus.shadow), by tier and live → shadow.
function shadowView(shadow) {
  if (!shadow) return h("p", { class: "muted", id: "policy-no-shadow" }, "No shadow policy (serve --shadow-policies PATH decides one on every request, never enforced).");
  const counts = shadow.divergences || [];
  return h(
    "div",
    {},
    h(
      "dl",
      { class: "facts" },
      h("dt", {}, "Version"),
      h("dd", { class: "mono", id: "shadow-version" }, shadow.version),
      h("dt", {}, "Files"),
      h("dd", {}, (shadow.files || []).map((f) => h("div", { class: "mono" }, f))),
      h("dt", {}, "Decided"),
      h("dd", { id: "shadow-decided" }, `${Number(shadow.decided || 0).toLocaleString()} requests · ${Number(shadow.sampled || 0).toLocaleString()} divergences sampled into the feed`),
      shadow.lastError ? [h("dt", {}, "Last reload error"), h("dd", {}, h("pre", { class: "mono error wrap" }, shadow.lastError))] : null
    ),
    counts.length
      ? h(
          "table",
          { class: "divergences", id: "shadow-divergences" },
          h("thead", {}, h("tr", {}, h("th", {}, "Tier"), h("th", {}, "Live → shadow"), h("th", { class: "num" }, "Requests"))),
          h(
            "tbody",
            {},
            counts.map((d) => h("tr", { "data-divergence": `${d.tier} ${d.reason}` }, h("td", {}, d.tier), h("td", { class: "mono" }, d.reason.replace("->", " → ")), h("td", { class: "num" }, Number(d.count).toLocaleString())))
          )
        )
      : h("p", { class: "muted" }, "No divergence: the shadow policy has answered as the live one.")
  );
}

function rulesTable(rules) {
  if (!rules.length) return h("p", { class: "muted" }, "None.");
  return h(
    "table",
    {},
    h("thead", {}, h("tr", {}, h("th", {}, "Metric"), h("th", {}, "Window"), h("th", { class: "num" }, "Cap"), h("th", {}, "Kind"), h("th", { class: "num" }, "Warn"), h("th", { class: "num" }, "Block"))),
    h(
      "tbody",
      {},
      rules.map((r) =>
        h(
          "tr",
          {},
          h("td", {}, r.metric),
          h("td", {}, r.window),
          h("td", { class: "num" }, amount(r.metric, r.max)),
          h("td", {}, String(r.kind || "").replace("LIMIT_KIND_", "").toLowerCase().replace("_", " ")),
          h("td", { class: "num" }, Number(r.warnAt) ? pct(r.warnAt) : "—"),
          h("td", { class: "num" }, pct(r.blockAt))
        )
      )
    )
  );
}

// -- Analytics ------------------------------------------------------------------------------

views.analytics = {
  every: 10000,
  mount() {
    const period = state.period || "today";
    $("view").replaceChildren(
      h(
        "section",
        { class: "card spaced-below" },
        h(
          "div",
          { class: "toolbar" },
          h("h2", {}, "Analytics (from the ledger)"),
          ["today", "7d", "month"].map((p) =>
            h("button", { class: p === period ? "" : "secondary", "data-period": p, onclick: () => { state.period = p; route(); } }, { today: "Today", "7d": "7 days", month: "This month" }[p])
          )
        ),
        h("div", { id: "analytics-total" })
      ),
      h(
        "div",
        { class: "grid two" },
        card("By tier", h("div", { id: "by-tier", class: "scroll" })),
        card("By feature", h("div", { id: "by-feature", class: "scroll" })),
        card("By provider", h("div", { id: "by-provider", class: "scroll" })),
        card("By model", h("div", { id: "by-model", class: "scroll" }))
      ),
      h("div", { class: "spaced" }, card("Daily usage per subject, by tier (against the daily cap)", h("div", { id: "daily", class: "scroll" })))
    );
  },
  async refresh() {
    const report = await admin("GetAnalytics", { period: state.period || "today" });
    fill(
      "analytics-total",
      h("div", { class: "stat" }, usd(report.costUsd), h("small", {}, ` spent by ${Number(report.records).toLocaleString()} settled requests, ${when(report.since)} – ${when(report.until)}`))
    );
    for (const [id, rows] of [["by-tier", report.byTier], ["by-feature", report.byFeature], ["by-provider", report.byProvider], ["by-model", report.byModel]]) fill(id, groupTable(rows || [], Number(report.costUsd)));
    fill("daily", dailyTable(report.daily || []));
  },
};

function groupTable(rows, total) {
  if (!rows.length) return h("p", { class: "muted" }, "No settled requests in this period.");
  return h(
    "table",
    {},
    h("thead", {}, h("tr", {}, h("th", {}, "Key"), h("th", { class: "num" }, "Spend"), h("th", { class: "num" }, "Share"), h("th", { class: "num" }, "Tokens"), h("th", { class: "num" }, "Images"), h("th", { class: "num" }, "Requests"))),
    h(
      "tbody",
      {},
      rows.map((r) =>
        h(
          "tr",
          {},
          h("td", {}, r.key || "—"),
          h("td", { class: "num" }, usd(r.costUsd)),
          h("td", { class: "num" }, total ? pct(Number(r.costUsd) / total) : "—"),
          h("td", { class: "num" }, amount("tokens", r.tokens)),
          h("td", { class: "num" }, amount("images", r.images)),
          h("td", { class: "num" }, Number(r.records).toLocaleString())
        )
      )
    )
  );
}

function dailyTable(rows) {
  if (!rows.length) return h("p", { class: "muted" }, "No settled requests in this period.");
  return h(
    "table",
    {},
    h("thead", {}, h("tr", {}, h("th", {}, "Tier"), h("th", {}, "Metric"), h("th", { class: "num" }, "Subject-days"), h("th", { class: "num" }, "p50"), h("th", { class: "num" }, "p95"), h("th", { class: "num" }, "max"), h("th", { class: "num" }, "Daily cap"), h("th", {}, "p95 of cap"))),
    h(
      "tbody",
      {},
      rows.map((r) => {
        const cap = Number(r.cap);
        const ratio = cap ? Number(r.p95) / cap : 0;
        const level = ratio >= 0.95 ? "DENY" : ratio >= 0.8 ? "WARN" : null;
        return h(
          "tr",
          {},
          h("td", {}, r.tier),
          h("td", {}, r.metric),
          h("td", { class: "num" }, Number(r.subjectDays).toLocaleString()),
          h("td", { class: "num" }, amount(r.metric, r.p50)),
          h("td", { class: "num" }, amount(r.metric, r.p95)),
          h("td", { class: "num" }, amount(r.metric, r.max)),
          h("td", { class: "num" }, cap ? amount(r.metric, cap) : "none"),
          h("td", {}, cap ? [pct(ratio), " ", level ? badge(level) : null] : "—")
        );
      })
    )
  );
}

// -- Audit ----------------------------------------------------------------------------------

views.audit = {
  every: 3000,
  mount() {
    $("view").replaceChildren(card("Audit log: who changed what, when and why", h("div", { id: "audit", class: "scroll" })));
  },
  async refresh() {
    const reply = await admin("ListAudit", { limit: 200 });
    const entries = reply.entries || [];
    if (!entries.length) return fill("audit", h("p", { class: "muted" }, "No admin changes yet."));
    fill(
      "audit",
      h(
        "table",
        {},
        h("thead", {}, h("tr", {}, h("th", {}, "When"), h("th", {}, "Who"), h("th", {}, "Action"), h("th", {}, "Target"), h("th", {}, "Before → after"), h("th", {}, "Reason"))),
        h(
          "tbody",
          {},
          entries.map((e) =>
            h(
              "tr",
              { "data-action": e.action },
              h("td", {}, whenMs(e.at)),
              h("td", { class: "mono" }, e.actor),
              h("td", {}, e.action),
              h("td", {}, e.target),
              h("td", {}, `${auditValue(e.before)} → ${auditValue(e.after)}`),
              h("td", {}, e.reason || "")
            )
          )
        )
      )
    );
  },
};

// An audit entry's before/after (JSON text) for a person: "—" for nothing, an object as its
// fields (without who/when, which the row shows), anything else as it is.
function auditValue(text) {
  if (!text) return "—";
  let value;
  try {
    value = JSON.parse(text);
  } catch {
    return text;
  }
  if (value === null || value === "") return "—";
  if (typeof value !== "object") return String(value);
  const parts = Object.entries(value)
    .filter(([key, v]) => key !== "created_at" && key !== "created_by" && v !== "" && v !== null)
    .map(([key, v]) => `${key}: ${key === "expires_at" && Number(v) ? when(v) : typeof v === "object" ? JSON.stringify(v) : v}`);
  return parts.join(", ") || "—";
}

// -- start ----------------------------------------------------------------------------------

window.addEventListener("hashchange", route);
document.addEventListener("DOMContentLoaded", async () => {
  $("logout").addEventListener("click", () => logout(""));
  $("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await login($("token").value.trim());
      $("token").value = "";
      showApp();
    } catch (err) {
      $("login-error").textContent = err.status === 401 || err.status === 403 ? "That token is not valid here." : `Cannot sign in: ${err.message}`;
    }
  });
  if (!state.token) return showLogin("");
  try {
    await login(state.token);
    showApp();
  } catch {
    logout("");
  }
});
