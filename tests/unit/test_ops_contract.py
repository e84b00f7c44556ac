"""The committed bus contract and dashboard stay true to the code."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

from shared import asyncapi
from shared import metrics as _metrics  # registers the families

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "voiceagent.json"


def test_committed_asyncapi_matches_the_code() -> None:
    # `faststream docs gen services.<svc>.worker:asyncapi_app` imports the same apps; importing
    # must never connect (the brokers are documentation only).
    for service in asyncapi.SERVICES:
        assert asyncapi.service_app(service).broker is not None
    for path, text in asyncapi.generate().items():
        assert path.exists(), f"missing {path}: run `voiceagent asyncapi` (make asyncapi)"
        assert path.read_text(encoding="utf-8") == text, (
            f"{path.name} is out of date: run `voiceagent asyncapi` (make asyncapi)"
        )


def test_contract_names_the_payload_models_and_queue_groups() -> None:
    agent = yaml.safe_load((asyncapi.DOCS_DIR / "agent.yaml").read_text(encoding="utf-8"))
    channels = agent["channels"]
    assert channels["transcript:receive"]["bindings"]["nats"]["queue"] == "agent"
    assert channels["reply:send"]["address"] == "voice.*.reply"
    schemas = agent["components"]["schemas"]
    assert {"Transcript", "SpeechStarted", "ReplySegment", "Interrupt"} <= set(schemas)


def _exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


def test_dashboard_queries_only_metrics_that_exist() -> None:
    assert _metrics.STAGE_LATENCY is not None
    known = {fam.name for fam in REGISTRY.collect()}
    unquoted = [re.sub(r'"[^"]*"', "", e) for e in _exprs()]  # label values are not metrics
    used = {m for e in unquoted for m in re.findall(r"\b(voice_[a-z_]+)", e)}
    assert used, "the dashboard queries nothing"
    for metric in used:
        family = re.sub(r"_(bucket|total|count|sum)$", "", metric)
        assert family in known, f"dashboard uses unknown metric {metric}"


def test_every_dashboard_stage_is_observed_by_a_service() -> None:
    stages = {s for e in _exprs() for s in re.findall(r'stage="([a-z_]+)"', e)}
    assert {"endpointing", "asr_final", "agent_first_token", "agent_first_sentence"} <= stages
    assert {"tts_first_audio", "voice_to_voice"} <= stages
    source = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "services").rglob("*.py"))
    observed = set(re.findall(r'STAGE_LATENCY\.labels\(\s*SERVICE,\s*"([a-z_]+)"', source))
    assert stages <= observed, f"never observed: {stages - observed}"


def test_every_metric_family_is_used_outside_its_definition() -> None:
    source = "\n".join(
        p.read_text(encoding="utf-8")
        for d in ("services", "shared")
        for p in (ROOT / d).rglob("*.py")
        if p.name != "metrics.py"
    )
    for name in (
        "BUS_RECONNECTS",
        "ACTIVE_CALLS",
        "FRAMES",
        "FRAMES_DROPPED",
        "BAD_MESSAGES",
        "STAGE_LATENCY",
        "PROVIDER_ERRORS",
        "PROVIDER_RETRIES",
    ):
        assert re.search(rf"\b{name}\.(labels|inc)\(", source), f"{name} is never observed"
