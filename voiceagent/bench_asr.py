"""``python -m voiceagent.bench_asr``: the old, documented command for :mod:`benchmarks.asr`."""

from __future__ import annotations

import sys

from voiceagent.devtools import missing_dev_packages

if __name__ == "__main__":
    missing = missing_dev_packages("python -m voiceagent.bench_asr", ("benchmarks", "devkit"))
    if missing:
        print(missing)
        sys.exit(2)
    from benchmarks.asr import main

    sys.exit(main())
