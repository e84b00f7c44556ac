"""The benchmarks behind ``voiceagent bench`` / ``make bench`` (docs/performance.md) and the
robustness and ASR evaluations (``python -m benchmarks.robustness``, ``python -m benchmarks.asr``).

Development only, like :mod:`devkit` (which they build on): not in the production image.
"""
