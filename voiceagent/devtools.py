"""The development packages some commands need, and the one line saying they are absent.

``devkit`` (the call simulator, the provider fakes) and ``benchmarks`` are installed for
development (``pip install -e '.[dev]'`` from a source checkout) and left out of the production
image: there ``voiceagent call``, ``demo``, ``fakes``, ``up --providers cloud`` and ``bench``
say so instead of failing with a traceback.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence


def missing_dev_packages(command: str, packages: Sequence[str] = ("devkit",)) -> str | None:
    """The line to print when ``command`` (as typed) cannot run here (a package is absent)."""
    absent = []
    for name in packages:
        try:
            importlib.import_module(name)
        except ImportError:
            absent.append(name)
    if not absent:
        return None
    return (
        f"{command} needs the development packages ({', '.join(absent)}), which this "
        "install leaves out (the production image): from a source checkout, "
        "pip install -e '.[dev]'"
    )


__all__ = ["missing_dev_packages"]
