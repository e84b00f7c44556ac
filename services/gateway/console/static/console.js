// Console page: admin token, live feed (WS /console/feed), calls with transcripts and
// per-turn latency, and the softphone's controls. Text goes in with textContent only.
"use strict";

const TOKEN_KEY = "voiceagent-admin-token";
const $ = (id) => document.getElementById(id);
const calls = new Map();
let feed = null;
let retryTimer = null;

function takeToken() {
  // `voiceagent up` prints /console#token=...: the fragment never reaches a server or a log.
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function setFeedState(text, cls) {
  const el = $("feed-state");
  el.textContent = text;
  el.className = "pill " + (cls || "");
}

function showLogin(message) {
  $("app").hidden = true;
  $("login").hidden = false;
  if (message) setFeedState(message, "bad");
}

function connectFeed() {
  if (retryTimer) clearTimeout(retryTimer);
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const ws = new WebSocket(scheme + location.host + "/console/feed");
  feed = ws;
  let refused = null;
  ws.onopen = () => ws.send(JSON.stringify({ token: token() }));
  ws.onmessage = (e) => {
    const msg = JSON.parse(e.data);
    if (msg.kind === "hello") {
      setFeedState(msg.history ? "live" : "live (no history: event store unavailable)", "ok");
      $("login").hidden = true;
      $("app").hidden = false;
      // A reconnect sends the whole past again: start from a clean page.
      calls.clear();
      dirty.clear();
      inbox.length = 0;
      inboxHead = 0;
      $("calls").replaceChildren();
      delete document.body.dataset.history;
      for (const c of msg.calls) callView(c.call, c.started_at);
    } else if (msg.kind === "batch") {
      enqueue(msg.items);
    } else if (msg.kind === "history") {
      enqueue([{ kind: "history-done", live: msg.live, ended: msg.ended }]);
    } else if (msg.kind === "stats") {
      lastStats = msg;
      schedule();
    } else if (msg.kind === "error") {
      refused = msg.text;
    }
  };
  ws.onclose = (e) => {
    if (feed !== ws) return;
    if (e.code === 1008) {
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin(refused || "admin token refused");
      return;
    }
    setFeedState((refused || "disconnected") + ": retrying", "bad");
    retryTimer = setTimeout(connectFeed, 2000);
  };
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

// ------------------------------------------------------------------ work per frame
// Items wait in `inbox` and are applied a time slice per animation frame; timelines are
// redrawn only when dirty, a few per frame: 50 busy calls never freeze the page.
const inbox = [];
const INBOX_MAX = 50000; // beyond this the page drops items (and says so)
const APPLY_BUDGET_MS = 8;
const DRAW_BUDGET_MS = 6;
const MAX_CARDS = 300; // ended cards beyond this go, oldest first
const dirty = new Set();
let pageDropped = 0;
let lastStats = null;
let frameQueued = false;

function enqueue(items) {
  for (const it of items) {
    if (inbox.length >= INBOX_MAX) { pageDropped++; continue; }
    inbox.push(it);
  }
  schedule();
}

function schedule() {
  if (frameQueued) return;
  frameQueued = true;
  // A hidden tab gets no animation frames: keep up on a timer instead.
  if (document.hidden) setTimeout(frame, 50);
  else requestAnimationFrame(frame);
}

let inboxHead = 0;
function frame() {
  frameQueued = false;
  const t0 = performance.now();
  while (inboxHead < inbox.length && performance.now() - t0 < APPLY_BUDGET_MS) {
    const item = inbox[inboxHead++];
    try { apply(item); } catch (e) { /* one bad item never stops the page */ }
  }
  if (inboxHead >= inbox.length) { inbox.length = 0; inboxHead = 0; }
  else if (inboxHead > 4096) { inbox.splice(0, inboxHead); inboxHead = 0; }
  if (lastStats) { renderStats(lastStats); lastStats = null; }
  const t1 = performance.now();
  for (const c of dirty) {
    if (performance.now() - t1 > DRAW_BUDGET_MS) break;
    dirty.delete(c);
    drawCall(c);
  }
  if (inbox.length || dirty.size) schedule();
}

// ------------------------------------------------------------------ calls
function callView(sid, startedAt) {
  let c = calls.get(sid);
  if (c) {
    if (startedAt && startedAt < c.started) { c.started = startedAt; dirty.add(c); }
    return c;
  }
  const root = el("div", "call");
  root.dataset.call = sid;
  const head = el("div", "call-head");
  const status = el("span", "status", "live");
  const dur = el("span", "duration", "");
  const summary = el("span", "summary", "");
  const cost = el("span", "cost", "");
  head.append(el("span", "sid", sid), status, dur, summary, cost);
  const svg = window.VoiceagentTimeline.newSvg("timeline");
  svg.hidden = true;
  const detail = el("div", "detail");
  detail.hidden = true;
  const lines = el("div", "lines");
  root.append(head, svg, detail, lines);
  $("calls").prepend(root);
  $("no-calls").hidden = true;
  c = {
    sid, root, status, dur, summary, cost, svg, detail, lines,
    started: startedAt || Date.now() / 1000, endedAt: null,
    caller: new Map(), agent: new Map(), lat: new Map(), turnUtt: new Map(),
    marks: [], pauses: new Map(), selected: null, hasTimeline: false,
  };
  svg.addEventListener("click", (e) => {
    const t = e.target.closest("[data-turn]");
    if (t) select(c, Number(t.getAttribute("data-turn")));
  });
  calls.set(sid, c);
  return c;
}

function line(c, who, cls) {
  const row = el("div", "line " + cls);
  const text = el("span", "text");
  const lat = el("span", "lat");
  row.append(el("span", "who", who), text, lat);
  c.lines.append(row);
  return { row, text, lat, segs: [] };
}

function ms(v) {
  return typeof v === "number" ? Math.round(v) + " ms" : null;
}

function fmtCost(fields) {
  const parts = [];
  for (const k of Object.keys(fields)) {
    const v = fields[k];
    if (v === null || v === undefined || v === "") continue;
    if (k === "cost_usd" && typeof v === "number") parts.push("$" + v.toFixed(4));
    else parts.push(k.replace(/_/g, " ") + " " + (typeof v === "number" ? v.toFixed(4) : v));
  }
  return parts.join(" · ");
}

function costFields(obj) {
  const out = {};
  for (const k of Object.keys(obj || {})) if (k === "cost" || k.startsWith("cost_")) out[k] = obj[k];
  return out;
}

function markEnded(c, at, reason, durationS, costs) {
  c.root.classList.add("ended");
  c.endedAt = at || c.endedAt || Date.now() / 1000;
  c.status.textContent = "ended (" + (reason || "") + ")";
  if (typeof durationS === "number") c.dur.textContent = durationS.toFixed(1) + " s";
  const cost = fmtCost(costs || {});
  if (cost) c.cost.textContent = "cost " + cost;
}

function uttLine(c, id) {
  let u = c.caller.get(id);
  if (!u) {
    u = { id, start: null, end: null, speechMs: null, final: false, l: null };
    c.caller.set(id, u);
  }
  return u;
}

function agentTurn(c, turn) {
  let a = c.agent.get(turn);
  if (!a) {
    a = { turn, l: null, segs: [], text: "", start: null, end: null, cut: false };
    c.agent.set(turn, a);
  }
  return a;
}

function mark(c, type, at, label, turn) {
  c.marks.push({ type, at, label: label || "", turn });
  c.hasTimeline = true;
}

function apply(item) {
  if (item.kind === "history-done") {
    sortCards();
    document.body.dataset.history = "loaded";
    $("history-note").textContent = item.live + " live, " + item.ended + " ended in the last hour (from the event store)";
    return;
  }
  const c = callView(item.call, item.kind === "summary" ? item.started_at : item.at);
  dirty.add(c);
  const at = item.at;
  if (item.kind === "summary") {
    const p = [];
    p.push(item.turns + " turn" + (item.turns === 1 ? "" : "s"));
    if (typeof item.p50_ms === "number") p.push("p50 " + Math.round(item.p50_ms) + " ms");
    if (item.barge_ins) p.push(item.barge_ins + " barge-in" + (item.barge_ins === 1 ? "" : "s"));
    c.summary.textContent = p.join(" · ");
    c.started = item.started_at;
    markEnded(c, item.ended_at, item.reason, item.duration_s, costFields(item));
    return;
  }
  if (item.kind === "caller") {
    const u = uttLine(c, item.utterance);
    if (!u.l) u.l = line(c, "caller", "caller");
    u.l.text.textContent = item.text;
    u.l.row.classList.toggle("interim", !item.final);
    if (u.start === null) u.start = at;
    if (item.final) {
      u.final = true;
      if (typeof item.speech_ended_at === "number") u.end = item.speech_ended_at;
      u.timings = { endpointing: item.endpointing_ms, asr: item.asr_ms };
      const parts = [];
      if (ms(item.endpointing_ms)) parts.push("endpointing " + ms(item.endpointing_ms));
      if (ms(item.asr_ms)) parts.push("ASR final " + ms(item.asr_ms));
      u.l.lat.textContent = parts.join(" · ");
    }
    c.hasTimeline = true;
  } else if (item.kind === "speech_started") {
    const u = uttLine(c, item.utterance);
    u.start = at;
    c.hasTimeline = true;
  } else if (item.kind === "speech_stopped") {
    const u = uttLine(c, item.utterance);
    if (u.end === null) u.end = at;
    u.speechMs = item.speech_ms;
    u.stopped = true;
  } else if (item.kind === "agent") {
    const a = agentTurn(c, item.turn);
    if (!a.l) {
      a.l = line(c, "agent", "agent");
      a.l.row.dataset.turn = item.turn;
      a.l.row.addEventListener("click", () => select(c, item.turn));
    }
    a.segs[item.seq] = item.text;
    a.text = a.segs.filter((s) => s).join(" ");
    a.l.text.textContent = a.text;
  } else if (item.kind === "latency") {
    c.lat.set(item.turn, item);
    renderLatency(c, item.turn);
  } else if (item.kind === "control") {
    applyControl(c, item);
  } else if (item.kind === "event") {
    applyEvent(c, item);
  }
}

function applyControl(c, item) {
  const at = item.at;
  if (item.type === "dtmf") mark(c, "key", at, item.digit);
  else if (item.type === "played") {
    const a = agentTurn(c, item.turn);
    a.end = Math.max(a.end || 0, at);
    if (!item.complete) a.cut = true;
  } else if (item.type === "call_ended") markEnded(c, at, item.reason, null, null);
}

function applyEvent(c, item) {
  const d = item.data || {};
  const at = item.at;
  const name = item.name;
  if (name === "call.started") {
    if (at < c.started || !c.hasTimeline) c.started = at;
    c.hasTimeline = true;
  } else if (name === "call.ended") {
    markEnded(c, at, d.reason, d.duration_s, costFields(d));
    mark(c, "ended", at, d.reason);
  } else if (name === "turn.first_audio") {
    const a = agentTurn(c, item.turn);
    if (a.start === null) a.start = at;
    c.hasTimeline = true;
  } else if (name === "agent.turn_started") {
    if (typeof d.utterance_id === "number") c.turnUtt.set(item.turn, d.utterance_id);
  } else if (name === "barge_in.paused" || name === "barge_in.held") {
    // A held sound that goes on is paused later: the pause began at the hold.
    const open = c.pauses.get(item.turn);
    if (!open || open.end !== null) c.pauses.set(item.turn, { turn: item.turn, start: at, end: null });
  } else if (name === "barge_in.reverted") {
    const p = c.pauses.get(item.turn) || { turn: item.turn, start: at };
    p.end = at;
    p.resumed = true;
    c.pauses.set(item.turn, p);
    mark(c, "false-interruption", p.start, "resumed after " + Math.round((at - p.start) * 1000) + " ms (" + (d.why || "") + ")", item.turn);
  } else if (name === "barge_in" || name === "interrupted") {
    const p = c.pauses.get(item.turn);
    const cutAt = p && p.end === null ? p.start : at;
    if (p && p.end === null) { p.end = at; p.confirmed = true; }
    const a = agentTurn(c, item.turn);
    a.end = cutAt;
    a.cut = true;
    a.cutFinal = true;
    mark(c, name === "barge_in" ? "barge-in" : "interrupted", cutAt, d.why ? "why: " + d.why : "", item.turn);
  } else if (name === "prompt") mark(c, "prompt", at, d.reason);
  else if (name === "call.transfer") mark(c, "transfer", at, d.outcome);
  else if (name === "call.hangup") mark(c, "hangup", at, d.reason);
  else if (name === "asr.lost") mark(c, "worker-lost", at, "ASR worker");
  else if (name === "asr.claimed" && item.service === "gateway" && d.reclaim) mark(c, "reclaimed", at, d.worker ? "by " + d.worker : "");
  else if (name === "agent.retry" || name === "tts.retry") mark(c, "retry", at, name);
}

function renderLatency(c, turn) {
  const lat = c.lat.get(turn);
  const a = c.agent.get(turn);
  if (!lat || !a || !a.l) return;
  let bar = a.l.bar;
  if (!bar) {
    bar = window.VoiceagentTimeline.newSvg("latency-bar");
    a.l.bar = bar;
    a.l.lat.replaceChildren();
    a.l.lat.append(bar, el("span", "lat-text"));
  }
  window.VoiceagentTimeline.renderLatencyBar(bar, lat, 0.1);
  const p = lat.parts;
  a.l.lat.lastChild.textContent = "voice-to-voice " + ms(lat.voice_to_voice_ms) +
    " = " + window.VoiceagentTimeline.STAGES.map((s) => Math.round(p[s])).join(" + ") +
    (lat.scaled ? " (scaled)" : "") +
    (lat.missing.length ? " (not reported: " + lat.missing.join(", ") + ")" : "");
  if (c.selected === turn) showDetail(c, turn);
}

function select(c, turn) {
  c.selected = c.selected === turn ? null : turn;
  if (c.selected === null) c.detail.hidden = true;
  else showDetail(c, turn);
  dirty.add(c);
  schedule();
}

function showDetail(c, turn) {
  const T = window.VoiceagentTimeline;
  const a = c.agent.get(turn);
  const uid = c.turnUtt.get(turn);
  const u = uid !== undefined ? c.caller.get(uid) : null;
  const lat = c.lat.get(turn);
  const box = [];
  box.push(el("h3", "", "turn " + turn));
  if (u && u.l) box.push(el("p", "said caller", "caller: " + u.l.text.textContent));
  if (a) box.push(el("p", "said agent", "agent: " + (a.text || "")));
  if (lat) {
    const svg = T.newSvg("latency-bar big");
    T.renderLatencyBar(svg, lat, 0.25, 18);
    box.push(svg);
    const dl = el("dl", "stats");
    for (const s of T.STAGES) {
      dl.append(el("dt", "stage-name " + s, T.STAGE_LABEL[s]), el("dd", "", Math.round(lat.parts[s]) + " ms"));
    }
    dl.append(el("dt", "", "voice-to-voice"), el("dd", "", Math.round(lat.voice_to_voice_ms) + " ms"));
    box.push(dl);
  } else {
    box.push(el("p", "hint", "no latency for this turn (no caller speech before it, or not measured yet)"));
  }
  if (a && a.start !== null) {
    box.push(el("p", "hint", "agent audio from " + (a.start - c.started).toFixed(2) + " s" +
      (a.end !== null ? " to " + (a.end - c.started).toFixed(2) + " s" : "") + (a.cut ? " (cut short)" : "")));
  }
  c.detail.replaceChildren(...box);
  c.detail.hidden = false;
}

function timelineModel(c, now) {
  const t1 = c.endedAt || now;
  const answeredBy = new Map();
  for (const [turn, utt] of c.turnUtt) answeredBy.set(utt, turn);
  const caller = [];
  for (const u of c.caller.values()) {
    let end = u.end;
    let start = u.start;
    if (end !== null && typeof u.speechMs === "number") start = end - u.speechMs / 1000;
    if (start === null) continue;
    if (end === null) end = u.stopped ? start : t1;
    caller.push({ id: u.id, start, end, final: u.final, turn: answeredBy.get(u.id) });
  }
  const agent = [];
  for (const a of c.agent.values()) {
    if (a.start === null) continue;
    agent.push({ turn: a.turn, start: a.start, end: a.end !== null ? Math.max(a.end, a.start) : t1, cut: a.cut });
  }
  const pauses = [];
  for (const p of c.pauses.values()) pauses.push({ turn: p.turn, start: p.start, end: p.end === null ? t1 : p.end });
  return { t0: c.started, t1, caller, agent, pauses, marks: c.marks };
}

function drawCall(c) {
  if (!c.hasTimeline) return;
  c.svg.hidden = false;
  window.VoiceagentTimeline.renderTimeline(c.svg, timelineModel(c, Date.now() / 1000), c.selected);
}

function sortCards() {
  const all = [...calls.values()];
  all.sort((a, b) => {
    const la = a.endedAt === null, lb = b.endedAt === null;
    if (la !== lb) return la ? -1 : 1;
    return la ? b.started - a.started : b.endedAt - a.endedAt;
  });
  for (const c of all) $("calls").append(c.root);
}

function trimCards() {
  const ended = [...calls.values()].filter((c) => c.endedAt !== null);
  if (calls.size <= MAX_CARDS) return;
  ended.sort((a, b) => a.endedAt - b.endedAt);
  for (const c of ended.slice(0, calls.size - MAX_CARDS)) {
    c.root.remove();
    calls.delete(c.sid);
    dirty.delete(c);
  }
}

// ------------------------------------------------------------------ the system view
function renderStats(s) {
  const T = window.VoiceagentTimeline;
  $("sys-live").textContent = s.live_calls;
  $("sys-local").textContent = s.local_calls;
  const lost = s.dropped + pageDropped;
  $("sys-dropped").textContent = lost;
  $("sys-dropped-row").hidden = lost === 0;
  const body = $("sys-stages");
  const rows = [];
  const order = [...T.STAGES, "voice_to_voice"];
  const top = Math.max(1, ...order.map((k) => (s.stages[k] ? s.stages[k].p95 : 0)));
  for (const k of order) {
    const st = s.stages[k];
    const tr = el("tr", "stage-row");
    tr.dataset.stage = k;
    tr.append(el("td", "stage-name " + k, k === "voice_to_voice" ? "voice-to-voice" : T.STAGE_LABEL[k]));
    tr.append(el("td", "num p50", st ? Math.round(st.p50) + " ms" : "-"));
    tr.append(el("td", "num p95", st ? Math.round(st.p95) + " ms" : "-"));
    tr.append(el("td", "num n", st ? String(st.n) : "0"));
    const cell = el("td", "pbar");
    if (st) {
      const svg = T.newSvg("pbar");
      svg.setAttribute("width", 240);
      svg.setAttribute("height", 12);
      svg.append(T.svgEl("rect", { x: 0, y: 2, width: (st.p95 / top) * 240, height: 8, class: "p95 " + k }));
      svg.append(T.svgEl("rect", { x: 0, y: 0, width: (st.p50 / top) * 240, height: 12, class: "p50 " + k }));
      cell.append(svg);
    }
    tr.append(cell);
    rows.push(tr);
  }
  body.replaceChildren(...rows);
  $("sys-window").textContent = Math.round(s.window_s / 60);
}

const phone = new window.VoiceagentSoftphone.Softphone({
  getToken: token,
  onState: (state, sid) => {
    $("sp-state").textContent = state;
    if (sid) $("sp-call").textContent = sid;
    const inCall = phone.active || phone.calling;
    $("call-btn").disabled = inCall;
    $("hangup-btn").disabled = !inCall;
  },
  onStats: (s) => {
    $("sp-tx").textContent = s.sentBytes;
    $("sp-rx").textContent = s.receivedBytes;
    $("sp-marks").textContent = s.marksPlayed;
  },
});
window.voiceagentPhone = phone;

$("call-btn").addEventListener("click", () => phone.call());
$("hangup-btn").addEventListener("click", () => phone.hangup());
$("login-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token-input").value.trim());
  $("token-input").value = "";
  connectFeed();
});

if (takeToken()) connectFeed();
else showLogin();
