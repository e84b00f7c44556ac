"""CI/CD, checked offline: the workflows validate against the GitHub Actions workflow schema
(SchemaStore's, vendored in tests/data/schemas) and do what docs/operations.md says.

- every push runs the README's ``make test`` (through ``.ci/run``, which stays exactly that);
- the image is pushed with short-lived credentials: an OIDC role, ``id-token: write``, and no
  static key anywhere;
- the deploy is ``kubectl apply -k deploy/k8s`` with the image set to the new tag, to staging,
  then to the ``production`` environment (whose required reviewers are the manual approval).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
SCHEMA = json.loads((ROOT / "tests" / "data" / "schemas" / "github-workflow.json").read_text())


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans only: GitHub reads ``on:`` as a key, PyYAML (1.1) as ``True``."""


_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:bool"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.load((WORKFLOWS / name).read_text(), Loader=_Loader)
    return data


FILES = sorted(p.name for p in WORKFLOWS.glob("*.yml"))


def test_there_are_workflows() -> None:
    assert {"test.yml", "release.yml", "deploy.yml"} <= set(FILES)


@pytest.mark.parametrize("name", FILES)
def test_workflow_validates_against_the_schema(name: str) -> None:
    jsonschema.validate(load(name), SCHEMA, cls=jsonschema.Draft7Validator)


def test_the_schema_check_is_not_vacuous() -> None:
    bad = load("test.yml")
    bad["jobs"]["test"]["runs_on"] = bad["jobs"]["test"].pop("runs-on")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, SCHEMA, cls=jsonschema.Draft7Validator)


def _steps(wf: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for job in wf["jobs"].values() for s in job.get("steps", [])]


def test_every_push_runs_make_test() -> None:
    wf = load("test.yml")
    assert "push" in wf["on"] and "pull_request" in wf["on"] and "workflow_call" in wf["on"]
    assert [s["run"] for s in _steps(wf) if "run" in s][-1] == ".ci/run"
    ci = [
        line
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.startswith(("#", "set ", "cd "))
    ]
    assert ci == ["make test"]


def test_images_are_pushed_with_oidc_and_no_static_keys() -> None:
    text = "\n".join((WORKFLOWS / n).read_text() for n in FILES)
    assert not re.search(r"aws-access-key-id|aws-secret-access-key|secrets\.AWS", text)
    release = load("release.yml")
    image = release["jobs"]["image"]
    assert image["needs"] == "test"
    assert image["permissions"]["id-token"] == "write"
    creds = next(s for s in image["steps"] if "configure-aws-credentials" in s.get("uses", ""))
    assert creds["with"]["role-to-assume"].startswith("${{ vars.")
    push = next(s for s in image["steps"] if "build-push-action" in s.get("uses", ""))
    assert push["with"]["push"] is True
    assert push["with"]["tags"] == "${{ steps.ref.outputs.image }}"


def test_deploys_apply_the_kustomization_with_the_new_tag_and_production_waits() -> None:
    release = load("release.yml")["jobs"]
    assert release["test"]["uses"] == "./.github/workflows/test.yml"
    for env in ("staging", "production"):
        job = release[env]
        assert job["uses"] == "./.github/workflows/deploy.yml"
        assert job["with"] == {"environment": env, "image": "${{ needs.image.outputs.image }}"}
    assert "staging" in release["production"]["needs"]

    deploy = load("deploy.yml")
    assert set(deploy["on"]["workflow_call"]["inputs"]) == {"environment", "image"}
    (job,) = deploy["jobs"].values()
    assert job["environment"] == "${{ inputs.environment }}"  # production: required reviewers
    runs = [s.get("run", "") for s in job["steps"]]
    set_image = runs.index('kustomize edit set image "voiceagent=$IMAGE"')
    assert job["steps"][set_image]["working-directory"] == "deploy/k8s"
    assert runs.index("kubectl apply -k deploy/k8s") > set_image

    # kustomize replaces only images named as in the manifests.
    kust = yaml.safe_load((ROOT / "deploy" / "k8s" / "kustomization.yaml").read_text())
    names = {i["name"] for i in kust["images"]}
    for doc in (ROOT / "deploy" / "k8s").glob("*.yaml"):
        for d in yaml.safe_load_all(doc.read_text()):
            if d and d.get("kind") == "Deployment":
                for c in d["spec"]["template"]["spec"]["containers"]:
                    assert c["image"].split(":")[0] in names, (doc.name, c["image"])
