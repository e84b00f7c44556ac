// SVG pictures for the console: a call's timeline (caller and agent tracks on a time axis,
// with interruptions, keys, prompts, transfers, hang-ups and worker failovers) and the
// stacked latency bar of a turn. Built with createElementNS/textContent only (strict CSP).
"use strict";

(function () {
  const NS = "http://www.w3.org/2000/svg";
  const STAGES = ["endpointing", "recognition", "agent", "tts", "overhead"];
  const STAGE_LABEL = {
    endpointing: "end-of-turn wait",
    recognition: "recognition",
    agent: "agent first sentence",
    tts: "speech synthesis",
    overhead: "our overhead",
  };
  const W = 1000; // timeline viewBox width
  const LEFT = 56; // room for the track names
  const ROW = { caller: 12, agent: 36 };
  const ROW_H = 16;
  const H = 72;

  // What each mark means on the timeline (glyph class, which track, label).
  const MARKS = {
    "barge-in": ["agent", "barge-in (real interruption)"],
    "false-interruption": ["agent", "false interruption, resumed"],
    interrupted: ["agent", "interrupted (newer turn)"],
    key: ["caller", "key pressed"],
    prompt: ["agent", "silence prompt"],
    transfer: ["both", "transfer"],
    hangup: ["both", "hang-up"],
    "worker-lost": ["both", "ASR worker lost"],
    reclaimed: ["both", "call re-claimed by a worker"],
    retry: ["both", "stage retried after a lost worker"],
    ended: ["both", "call ended"],
  };

  function svgEl(tag, attrs, text) {
    const e = document.createElementNS(NS, tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function tickStep(span) {
    const steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800];
    for (const s of steps) if (span / s <= 10) return s;
    return 3600;
  }

  function fmtT(s) {
    s = Math.round(s);
    return s < 60 ? s + "s" : Math.floor(s / 60) + ":" + String(s % 60).padStart(2, "0");
  }

  // model: {t0, t1, caller: [{id, start, end, final}], agent: [{turn, start, end, cut}],
  //         pauses: [{turn, start, end}], marks: [{type, at, label}]}, selected: turn or null
  function renderTimeline(svg, model, selected) {
    const span = Math.max(10, model.t1 - model.t0);
    const x = (t) => LEFT + ((Math.min(Math.max(t, model.t0), model.t0 + span) - model.t0) / span) * (W - LEFT - 6);
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    svg.setAttribute("preserveAspectRatio", "none");
    const kids = [];
    kids.push(svgEl("text", { x: 2, y: ROW.caller + 12, class: "track-name caller" }, "caller"));
    kids.push(svgEl("text", { x: 2, y: ROW.agent + 12, class: "track-name agent" }, "agent"));
    kids.push(svgEl("line", { x1: LEFT, x2: W - 6, y1: ROW.caller + ROW_H + 3, y2: ROW.caller + ROW_H + 3, class: "track-sep" }));
    const step = tickStep(span);
    for (let s = 0; s <= span; s += step) {
      const tx = x(model.t0 + s);
      kids.push(svgEl("line", { x1: tx, x2: tx, y1: H - 14, y2: H - 10, class: "tick" }));
      kids.push(svgEl("text", { x: tx + 2, y: H - 2, class: "tick-label" }, fmtT(s)));
    }
    for (const u of model.caller) {
      const r = svgEl("rect", {
        x: x(u.start), y: ROW.caller, width: Math.max(2, x(u.end) - x(u.start)), height: ROW_H,
        class: "span caller" + (u.final ? "" : " open"), "data-utterance": u.id,
        "data-start": u.start.toFixed(3), "data-end": u.end.toFixed(3),
      });
      if (u.turn !== undefined && u.turn !== null) r.setAttribute("data-turn", u.turn);
      r.append(svgEl("title", {}, "caller speaking, utterance " + u.id));
      kids.push(r);
    }
    for (const a of model.agent) {
      const r = svgEl("rect", {
        x: x(a.start), y: ROW.agent, width: Math.max(2, x(a.end) - x(a.start)), height: ROW_H,
        class: "span agent" + (a.cut ? " cut" : "") + (selected === a.turn ? " selected" : ""),
        "data-turn": a.turn, "data-start": a.start.toFixed(3), "data-end": a.end.toFixed(3),
      });
      r.append(svgEl("title", {}, "agent speaking, turn " + a.turn));
      kids.push(r);
    }
    for (const p of model.pauses) {
      kids.push(svgEl("rect", {
        x: x(p.start), y: ROW.agent - 2, width: Math.max(3, x(p.end) - x(p.start)), height: ROW_H + 4,
        class: "pause", "data-turn": p.turn,
      }));
    }
    for (const m of model.marks) {
      const def = MARKS[m.type] || ["both", m.type];
      const mx = x(m.at);
      const g = svgEl("g", {
        class: "mark " + m.type, "data-at": m.at.toFixed(3), "data-x": mx.toFixed(1),
        transform: "translate(" + mx.toFixed(1) + ",0)",
      });
      if (m.turn !== undefined && m.turn !== null) g.setAttribute("data-turn", m.turn);
      if (def[0] === "both") {
        g.append(svgEl("line", { x1: 0, x2: 0, y1: 2, y2: ROW.agent + ROW_H + 2 }));
      } else {
        const y = def[0] === "caller" ? ROW.caller : ROW.agent;
        g.append(svgEl("path", { d: "M0 " + (y - 4) + " l-5 -7 h10 z" }));
        g.append(svgEl("line", { x1: 0, x2: 0, y1: y - 4, y2: y + ROW_H }));
      }
      g.append(svgEl("title", {}, def[1] + (m.label ? ": " + m.label : "")));
      kids.push(g);
    }
    svg.replaceChildren(...kids);
  }

  // A turn's stacked bar: one rect per stage, widths in proportion to ms (pxPerMs).
  function renderLatencyBar(svg, lat, pxPerMs, height) {
    height = height || 12;
    const kids = [];
    let at = 0;
    for (const s of STAGES) {
      const ms = lat.parts[s] || 0;
      const w = ms * pxPerMs;
      const r = svgEl("rect", {
        x: at.toFixed(2), y: 0, width: w.toFixed(2), height: height,
        class: "stage " + s, "data-stage": s, "data-ms": ms,
      });
      r.append(svgEl("title", {}, STAGE_LABEL[s] + " " + Math.round(ms) + " ms"));
      kids.push(r);
      at += w;
    }
    svg.setAttribute("width", Math.max(1, Math.ceil(at)));
    svg.setAttribute("height", height);
    svg.setAttribute("data-v2v", lat.voice_to_voice_ms);
    svg.replaceChildren(...kids);
  }

  function newSvg(cls) {
    return svgEl("svg", { class: cls, xmlns: NS });
  }

  window.VoiceagentTimeline = {
    STAGES, STAGE_LABEL, MARKS, renderTimeline, renderLatencyBar, newSvg, svgEl,
  };
})();
