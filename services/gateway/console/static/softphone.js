// Browser softphone: speaks Twilio's Media Streams protocol to /twilio-stream, like Twilio does.
// Microphone -> low-pass + resample to 8 kHz -> G.711 mu-law -> "media" every 20 ms; reply audio
// -> mu-law decode -> AudioBuffers scheduled back to back; marks echoed once the audio sent
// before them has played; "clear" drops queued audio and echoes pending marks; "stop" on hang-up.
"use strict";

const G711 = (() => {
  // Same arithmetic as CPython's audioop (14-bit magnitude, bias 33, clip 8159): bit exact.
  const SEG_END = [0x3f, 0x7f, 0xff, 0x1ff, 0x3ff, 0x7ff, 0xfff, 0x1fff];
  function encodeSample(s16) {
    const pcm = s16 >> 2;
    const mask = pcm < 0 ? 0x7f : 0xff;
    const mag = Math.min(Math.abs(pcm), 8159) + 33;
    let seg = 0;
    while (seg < 8 && SEG_END[seg] < mag) seg++;
    const uval = seg >= 8 ? 0x7f : (seg << 4) | ((mag >> (seg + 1)) & 0x0f);
    return (uval ^ mask) & 0xff;
  }
  const ENCODE = new Uint8Array(65536);
  for (let i = 0; i < 65536; i++) ENCODE[i] = encodeSample(i >= 32768 ? i - 65536 : i);
  const DECODE = new Int16Array(256);
  for (let i = 0; i < 256; i++) {
    const u = ~i & 0xff;
    const exponent = (u >> 4) & 0x07;
    const magnitude = ((((u & 0x0f) << 3) + 0x84) << exponent) - 0x84;
    DECODE[i] = u & 0x80 ? -magnitude : magnitude;
  }
  return {
    encode(s16) {
      return ENCODE[s16 & 0xffff];
    },
    decode(byte) {
      return DECODE[byte & 0xff];
    },
  };
})();

// Float samples at `inRate` -> 8 kHz: windowed-sinc low-pass below 3.6 kHz (no aliasing),
// then linear interpolation at the output instants. Keeps state across blocks.
class Downsampler {
  constructor(inRate, outRate = 8000, taps = 63) {
    this.step = inRate / outRate;
    const cutoff = Math.min(3600, outRate * 0.45) / inRate;
    const half = (taps - 1) / 2;
    this.kernel = new Float32Array(taps);
    let sum = 0;
    for (let i = 0; i < taps; i++) {
      const x = i - half;
      const sinc = x === 0 ? 2 * cutoff : Math.sin(2 * Math.PI * cutoff * x) / (Math.PI * x);
      const w = 0.42 - 0.5 * Math.cos((2 * Math.PI * i) / (taps - 1)) +
        0.08 * Math.cos((4 * Math.PI * i) / (taps - 1));
      this.kernel[i] = sinc * w;
      sum += this.kernel[i];
    }
    for (let i = 0; i < taps; i++) this.kernel[i] /= sum;
    this.history = new Float32Array(taps - 1);
    this.pos = 0; // next output instant, in filtered-input samples from the block start
    this.prev = 0; // last filtered sample of the previous block
  }

  process(input) {
    const taps = this.kernel.length;
    const buf = new Float32Array(this.history.length + input.length);
    buf.set(this.history);
    buf.set(input, this.history.length);
    const filtered = new Float32Array(input.length);
    for (let n = 0; n < input.length; n++) {
      let acc = 0;
      for (let k = 0; k < taps; k++) acc += this.kernel[k] * buf[n + taps - 1 - k];
      filtered[n] = acc;
    }
    this.history = buf.slice(buf.length - (taps - 1));
    const out = [];
    while (this.pos < input.length) {
      const i = Math.floor(this.pos);
      const frac = this.pos - i;
      const a = i === 0 ? this.prev : filtered[i - 1];
      const b = filtered[i];
      out.push(a + (b - a) * frac);
      this.pos += this.step;
    }
    this.pos -= input.length;
    if (input.length) this.prev = filtered[input.length - 1];
    return Float32Array.from(out);
  }
}

function floatToMulaw(samples) {
  const out = new Uint8Array(samples.length);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    out[i] = G711.encode(Math.round(s < 0 ? s * 32768 : s * 32767));
  }
  return out;
}

function mulawToFloat(bytes) {
  const out = new Float32Array(bytes.length);
  for (let i = 0; i < bytes.length; i++) out[i] = G711.decode(bytes[i]) / 32768;
  return out;
}

function bytesToBase64(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]);
  return btoa(s);
}

function base64ToBytes(b64) {
  const s = atob(b64);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

function randomSid(prefix) {
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  return prefix + Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

const FRAME_BYTES = 160; // 20 ms of 8 kHz mu-law
const PLAYBACK_LEAD_S = 0.08; // jitter buffer before the first queued chunk plays

class Softphone {
  constructor({ getToken, onState, onStats }) {
    this.getToken = getToken;
    this.onState = onState || (() => {});
    this.onStats = onStats || (() => {});
    this.reset();
  }

  reset() {
    this.ws = null;
    this.ctx = null;
    this.stream = null;
    this.node = null;
    this.sources = new Set();
    this.playHead = 0;
    this.pendingMarks = [];
    this.outBuf = [];
    this.seq = 0;
    this.chunk = 0;
    this.started = false;
    this.stats = { sentBytes: 0, receivedBytes: 0, marksPlayed: 0, clears: 0 };
    this.callSid = null;
    this.streamSid = null;
    this.accountSid = null;
    if (this.markTimer) clearInterval(this.markTimer);
    this.markTimer = null;
  }

  get active() {
    return this.ws !== null;
  }

  async call() {
    if (this.active || this.calling) return;
    this.reset();
    this.calling = true;
    this.onState("calling");
    try {
      const resp = await fetch("/console/call", {
        method: "POST",
        headers: { Authorization: "Bearer " + this.getToken() },
      });
      const info = await resp.json().catch(() => ({}));
      if (!resp.ok) throw new Error(info.error || "call refused (" + resp.status + ")");
      this.stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true },
      });
      this.ctx = new AudioContext({ latencyHint: "interactive" });
      await this.ctx.resume();
      await this.ctx.audioWorklet.addModule("/console/static/mic-worklet.js");
      const source = this.ctx.createMediaStreamSource(this.stream);
      this.node = new AudioWorkletNode(this.ctx, "mic-capture");
      const mute = this.ctx.createGain();
      mute.gain.value = 0; // the worklet must be pulled by the graph; the caller hears nothing
      source.connect(this.node).connect(mute).connect(this.ctx.destination);
      const down = new Downsampler(this.ctx.sampleRate);
      this.node.port.onmessage = (e) => this.onMic(down.process(e.data));
      this.callSid = info.call_sid;
      this.accountSid = info.account_sid;
      this.streamSid = randomSid("MZ");
      this.parameters = info.parameters;
      const scheme = location.protocol === "https:" ? "wss://" : "ws://";
      this.ws = new WebSocket(scheme + location.host + info.stream_path, info.protocols);
      this.ws.onopen = () => this.onOpen();
      this.ws.onmessage = (e) => this.onMessage(e.data);
      this.ws.onclose = (e) => this.finish("ended (" + e.code + ")");
      this.ws.onerror = () => {};
      this.markTimer = setInterval(() => this.echoMarks(), 10);
    } catch (err) {
      this.finish("error: " + (err && err.message ? err.message : err));
    } finally {
      this.calling = false;
    }
  }

  send(obj) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(obj));
  }

  nextSeq() {
    this.seq += 1;
    return String(this.seq);
  }

  onOpen() {
    this.send({ event: "connected", protocol: "Call", version: "1.0.0" });
    this.send({
      event: "start",
      sequenceNumber: this.nextSeq(),
      streamSid: this.streamSid,
      start: {
        streamSid: this.streamSid,
        accountSid: this.accountSid,
        callSid: this.callSid,
        tracks: ["inbound"],
        customParameters: this.parameters,
        mediaFormat: { encoding: "audio/x-mulaw", sampleRate: 8000, channels: 1 },
      },
    });
    this.started = true;
    this.onState("in call", this.callSid);
  }

  onMic(samples) {
    if (!this.started) return;
    const bytes = floatToMulaw(samples);
    for (let i = 0; i < bytes.length; i++) this.outBuf.push(bytes[i]);
    while (this.outBuf.length >= FRAME_BYTES) {
      const frame = Uint8Array.from(this.outBuf.splice(0, FRAME_BYTES));
      this.chunk += 1;
      this.send({
        event: "media",
        sequenceNumber: this.nextSeq(),
        streamSid: this.streamSid,
        media: {
          track: "inbound",
          chunk: String(this.chunk),
          timestamp: String((this.chunk - 1) * 20),
          payload: bytesToBase64(frame),
        },
      });
      this.stats.sentBytes += FRAME_BYTES;
    }
    this.onStats(this.stats);
  }

  onMessage(text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch (e) {
      return;
    }
    if (msg.streamSid !== this.streamSid) return;
    if (msg.event === "media") this.play(base64ToBytes(msg.media.payload));
    else if (msg.event === "mark") this.pendingMarks.push({ name: msg.mark.name, at: this.playHead });
    else if (msg.event === "clear") this.clear();
    this.echoMarks();
  }

  play(bytes) {
    if (!this.ctx || bytes.length === 0) return;
    this.stats.receivedBytes += bytes.length;
    // An 8 kHz buffer: the AudioContext upsamples it to the device rate.
    const buffer = this.ctx.createBuffer(1, bytes.length, 8000);
    buffer.getChannelData(0).set(mulawToFloat(bytes));
    const src = this.ctx.createBufferSource();
    src.buffer = buffer;
    src.connect(this.ctx.destination);
    const now = this.ctx.currentTime;
    if (this.playHead < now) this.playHead = now + PLAYBACK_LEAD_S;
    src.start(this.playHead);
    this.playHead += buffer.duration;
    this.sources.add(src);
    src.onended = () => this.sources.delete(src);
    this.onStats(this.stats);
  }

  clear() {
    // Twilio: drop the buffered audio and echo the marks still pending.
    for (const src of this.sources) {
      try {
        src.stop();
      } catch (e) {}
    }
    this.sources.clear();
    this.stats.clears += 1;
    const now = this.ctx ? this.ctx.currentTime : 0;
    this.playHead = now;
    for (const m of this.pendingMarks) m.at = 0;
  }

  echoMarks() {
    if (!this.ctx) return;
    const now = this.ctx.currentTime;
    while (this.pendingMarks.length && this.pendingMarks[0].at <= now) {
      const m = this.pendingMarks.shift();
      this.send({
        event: "mark",
        sequenceNumber: this.nextSeq(),
        streamSid: this.streamSid,
        mark: { name: m.name },
      });
      this.stats.marksPlayed += 1;
      this.onStats(this.stats);
    }
  }

  hangup() {
    if (!this.ws) return;
    this.send({
      event: "stop",
      sequenceNumber: this.nextSeq(),
      streamSid: this.streamSid,
      stop: { accountSid: this.accountSid, callSid: this.callSid },
    });
    this.ws.close(1000);
    this.finish("hung up");
  }

  finish(state) {
    if (this.markTimer) clearInterval(this.markTimer);
    this.markTimer = null;
    this.started = false;
    this.calling = false;
    if (this.stream) this.stream.getTracks().forEach((t) => t.stop());
    if (this.ctx) this.ctx.close().catch(() => {});
    const ws = this.ws;
    if (ws) ws.onclose = null; // one ending only (ours, or the gateway's close)
    this.ws = null;
    this.ctx = null;
    this.stream = null;
    if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000);
    this.onState(state);
  }
}

window.VoiceagentSoftphone = { Softphone, G711, Downsampler, floatToMulaw, mulawToFloat };
