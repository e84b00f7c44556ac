"""The ASR's turn-taking: when a caller's turn is over, for every recognizer.

- :mod:`.end_of_turn`: the one end-of-turn decision (words, confidence, the agent's question,
  prosody) saying how long a pause the words need;
- :mod:`.prosody`: acoustic cues of finality (pitch fall, energy decay, final lengthening);
- :mod:`.turn_gate`: joins a recognizer's segments into turns by that decision (pure, virtual
  time); a fragment ended by the longest wait stays joinable by its continuation;
- :mod:`.turns`: runs the gate over any recognizer's event stream, clocked by the audio.
"""
