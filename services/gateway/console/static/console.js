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
      setFeedState("live", "ok");
      $("login").hidden = true;
      $("app").hidden = false;
      for (const c of msg.calls) callView(c.call, c.started_at);
    } else if (msg.kind === "batch") {
      msg.items.forEach(apply);
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

function callView(sid, startedAt) {
  let c = calls.get(sid);
  if (c) return c;
  const root = el("div", "call");
  root.dataset.call = sid;
  const head = el("div", "call-head");
  const status = el("span", "status", "live");
  const dur = el("span", "duration", "");
  head.append(el("span", "sid", sid), status, dur);
  const lines = el("div", "lines");
  root.append(head, lines);
  $("calls").prepend(root);
  $("no-calls").hidden = true;
  c = { root, status, dur, lines, started: startedAt || Date.now() / 1000, caller: new Map(),
        agent: new Map(), lat: new Map() };
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

function renderLatency(c, turn) {
  const t = c.lat.get(turn);
  const a = c.agent.get(turn);
  if (!t || !a) return;
  const parts = [];
  if (t.v2v) parts.push("voice-to-voice " + t.v2v);
  if (t.agent) parts.push("agent first sentence " + t.agent);
  if (t.tts) parts.push("TTS first audio " + t.tts);
  a.lat.textContent = parts.join(" · ");
}

function apply(item) {
  const c = callView(item.call, item.at);
  if (item.kind === "caller") {
    let l = c.caller.get(item.utterance);
    if (!l) {
      l = line(c, "caller", "caller");
      c.caller.set(item.utterance, l);
    }
    l.text.textContent = item.text;
    l.row.classList.toggle("interim", !item.final);
    if (item.final) {
      const parts = [];
      if (ms(item.endpointing_ms)) parts.push("endpointing " + ms(item.endpointing_ms));
      if (ms(item.asr_ms)) parts.push("ASR final " + ms(item.asr_ms));
      l.lat.textContent = parts.join(" · ");
    }
  } else if (item.kind === "agent") {
    let l = c.agent.get(item.turn);
    if (!l) {
      l = line(c, "agent", "agent");
      c.agent.set(item.turn, l);
    }
    l.segs[item.seq] = item.text;
    l.text.textContent = l.segs.filter((s) => s).join(" ");
    renderLatency(c, item.turn);
  } else if (item.kind === "event") {
    const d = item.data || {};
    if (item.name === "call.ended") {
      c.root.classList.add("ended");
      c.status.textContent = "ended (" + (d.reason || "") + ")";
      if (typeof d.duration_s === "number") c.dur.textContent = d.duration_s.toFixed(1) + " s";
    } else if (item.turn !== null && item.turn !== undefined) {
      const t = c.lat.get(item.turn) || {};
      if (item.name === "turn.first_audio" && ms(d.voice_to_voice_ms)) t.v2v = ms(d.voice_to_voice_ms);
      if (item.name === "agent.first_sentence" && ms(d.ms)) t.agent = ms(d.ms);
      if (item.name === "tts.first_audio" && ms(d.ms)) t.tts = ms(d.ms);
      c.lat.set(item.turn, t);
      renderLatency(c, item.turn);
    }
  }
}

setInterval(() => {
  const now = Date.now() / 1000;
  for (const c of calls.values()) {
    if (!c.root.classList.contains("ended")) c.dur.textContent = (now - c.started).toFixed(0) + " s";
  }
}, 1000);

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
