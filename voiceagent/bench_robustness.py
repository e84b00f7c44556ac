"""``python -m voiceagent.bench_robustness``: the old, documented command.

It runs :mod:`benchmarks.robustness`.
"""

from __future__ import annotations

import sys

from voiceagent.devtools import missing_dev_packages

if __name__ == "__main__":
    command = "python -m voiceagent.bench_robustness"
    missing = missing_dev_packages(command, ("benchmarks", "devkit"))
    if missing:
        print(missing)
        sys.exit(2)
    from benchmarks.robustness import main

    sys.exit(main())
