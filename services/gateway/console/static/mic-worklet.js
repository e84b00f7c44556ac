// AudioWorklet: hands each 128-frame block of microphone audio to the page (Float32, context
// rate). Resampling and G.711 encoding happen on the main thread (softphone.js).
class MicCapture extends AudioWorkletProcessor {
  process(inputs) {
    const input = inputs[0];
    if (input && input.length > 0 && input[0].length > 0) {
      this.port.postMessage(input[0].slice(0));
    }
    return true;
  }
}
registerProcessor("mic-capture", MicCapture);
