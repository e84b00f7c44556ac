"""Guard: every structured log field, bus-event data key and trace attribute is classified.

Like LiveKit's trace-attribute guard: a new ``kv(name=...)``, ``event(..., name=...)`` or
``start_span(..., name=...)`` fails this test until ``name`` is added to
``shared.logging.FIELDS`` as safe, redacted or secret. (At runtime an unknown name is treated as
redacted, so a forgotten classification hides data rather than leaking it.)
"""

from __future__ import annotations

import ast
import json
import logging
from collections import defaultdict
from pathlib import Path

from shared.logging import FIELDS, RedactingFormatter, classify, field_value, kv
from shared.messages import event

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("shared", "services", "voiceagent")
# Callables whose keyword arguments become log fields, event data or span attributes.
FIELD_CALLS = {"kv", "event", "_event", "_event_named", "start_span", "safe_attributes", "_bad"}
# Their own parameters, which are not data fields.
NOT_FIELDS = {
    "kv": set(),
    "default": {"call_sid", "service", "name", "turn", "parent", "start_ns", "why"},
}


def _callee(node: ast.Call) -> str | None:
    f = node.func
    if isinstance(f, ast.Name):
        return f.id
    if isinstance(f, ast.Attribute):
        if f.attr == "set" and "span" in ast.unparse(f.value).lower():
            return "span.set"
        if f.attr == "start_span":
            return None  # OpenTelemetry's own tracer.start_span(context=..., attributes=...)
        return f.attr
    return None


def _dict_keys(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Dict):
        return [
            k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)
        ]
    return []


def _spread_names(fn: ast.AST) -> dict[str, list[str]]:
    """Keys put into local dicts (``d = {...}``, ``d["k"] = v``) inside one function."""
    keys: dict[str, list[str]] = defaultdict(list)
    for node in ast.walk(fn):
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Name):
                    keys[t.id] += _dict_keys(node.value)
                elif (
                    isinstance(t, ast.Subscript)
                    and isinstance(t.value, ast.Name)
                    and isinstance(t.slice, ast.Constant)
                    and isinstance(t.slice.value, str)
                ):
                    keys[t.value.id].append(t.slice.value)
    return keys


def used_fields() -> dict[str, set[str]]:
    """Field name -> files using it, across the code base."""
    found: dict[str, set[str]] = defaultdict(set)
    for top in SCANNED:
        for path in (ROOT / top).rglob("*.py"):
            tree = ast.parse(path.read_text(), filename=str(path))
            rel = str(path.relative_to(ROOT))
            for fn in ast.walk(tree):
                if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef | ast.Module):
                    continue
                local = _spread_names(fn)
                for node in ast.walk(fn):
                    if not isinstance(node, ast.Call):
                        continue
                    callee = _callee(node)
                    if callee not in FIELD_CALLS and callee != "span.set" and callee != "Event":
                        continue
                    skip = NOT_FIELDS["kv"] if callee == "kv" else NOT_FIELDS["default"]
                    for k in node.keywords:
                        if callee == "Event":
                            if k.arg == "data":
                                for name in _dict_keys(k.value):
                                    found[name].add(rel)
                            continue
                        if k.arg is None:  # **spread: a literal dict or a local one
                            names = _dict_keys(k.value)
                            if isinstance(k.value, ast.Name):
                                names += local.get(k.value.id, [])
                            for name in names:
                                found[name].add(rel)
                        elif k.arg not in skip:
                            found[k.arg].add(rel)
    return found


def test_every_log_event_and_trace_field_is_classified() -> None:
    used = used_fields()
    assert len(used) > 40, "the scanner found too few fields: is it still looking?"
    missing = {name: sorted(files) for name, files in used.items() if classify(name) is None}
    assert not missing, (
        "unclassified log/event/trace fields (add them to shared.logging FIELDS as safe, "
        f"redacted or secret): {json.dumps(missing, indent=1)}"
    )


def test_scanner_sees_spread_dicts_and_would_catch_a_new_field(tmp_path: Path) -> None:
    src = (
        "def f(log, kv, ev):\n"
        "    data = {'ms': 1}\n"
        "    data['brand_new_field'] = 2\n"
        "    ev('x', **data)\n"
        "    log.info('m', **kv(another_new_one=3))\n"
    )
    tree = ast.parse(src)
    fn = tree.body[0]
    assert "brand_new_field" in _spread_names(fn)["data"]
    assert classify("brand_new_field") is None and classify("another_new_one") is None


def test_unknown_fields_are_redacted_at_runtime() -> None:
    assert field_value("not_registered_anywhere", "+1 555 123 4567") == "[TEXT len=15]"
    assert field_value("not_registered_anywhere", 15551234567) == "[REDACTED]"
    ev = event(call_sid="CA" + "0" * 32, service="t", name="x", not_registered=4155551234, ms=12)
    assert ev.data == {"not_registered": "[REDACTED]", "ms": 12}


def test_formatter_applies_the_classification() -> None:
    fmt = RedactingFormatter(service="t")
    rec = logging.LogRecord("t", logging.INFO, __file__, 1, "hi", None, None)
    fields = kv(
        call="CA" + "1" * 32,
        text="my card is 4111 1111 1111 1111",
        token="s3cr3t-value",
        error="failed for jane@example.com",
        mystery="Jane Doe, DOB 01/02/1980",
        ms=12.5,
    )["extra"]["fields"]
    rec.fields = fields
    line = json.loads(fmt.format(rec))
    assert line["call"].startswith("call-") and "1111" not in line["call"]
    assert line["text"] == "[TEXT len=30]"
    assert line["token"] == "[SECRET]"
    assert line["error"] == "failed for [EMAIL]"
    assert line["mystery"].startswith("[TEXT")
    assert line["ms"] == 12.5
    assert set(FIELDS.values()) == {"safe", "redacted", "secret"}
