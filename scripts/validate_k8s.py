#!/usr/bin/env python3
"""Validates `rmdistill export argo` / `export k8s` output against the upstream schemas, strictly.

    .venv/bin/python scripts/validate_k8s.py argo FILE   # an Argo Workflow (JSON)
    .venv/bin/python scripts/validate_k8s.py k8s FILE    # a v1 List of batch/v1 Jobs (JSON)

argo: Hera's models (hera.workflows.models, pydantic models generated from Argo Workflows' published OpenAPI/JSON
schema, Kubernetes' core types included) with unknown fields forbidden and strict types (no "5" for an integer).
k8s: kubernetes-validate's bundled Kubernetes JSON schemas, in their strict variant (additionalProperties: false),
for the newest Kubernetes version it ships.

Exit 0 when valid; 1 with one line per violation on stderr otherwise; 2 on usage errors. scripts/setup.sh installs
the pinned versions of both packages into .venv.
"""
import json
import sys


def strict_hera():
    # Forbid unknown fields in every generated model: the base class's config is inherited by the models as they are
    # defined, so it must be set before hera.workflows.models is imported.
    from hera.shared import _pydantic

    _pydantic.APIBaseModel.model_config["extra"] = "forbid"
    from hera.workflows.models import Workflow

    return Workflow


def validate_argo(text):
    import pydantic

    Workflow = strict_hera()
    try:
        Workflow.model_validate_json(text, strict=True)
    except pydantic.ValidationError as e:
        return [f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']} (got {json.dumps(err.get('input'))[:80]})" for err in e.errors()]
    return []


def validate_k8s(text):
    import kubernetes_validate
    from kubernetes_validate.utils import ValidationError, SchemaNotFoundError

    version = kubernetes_validate.latest_version()
    doc = json.loads(text)
    errs = []
    if doc.get("apiVersion") != "v1" or doc.get("kind") != "List" or not isinstance(doc.get("items"), list):
        errs.append("$: expected a v1 List with items")
        return errs
    unknown = sorted(set(doc) - {"apiVersion", "kind", "items", "metadata"})
    if unknown:
        errs.append(f"$: unknown field(s) {unknown}")
    for i, item in enumerate(doc["items"]):
        try:
            kubernetes_validate.validate(item, version, strict=True)
        except ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            errs.append(f"items[{i}].{path}: {e.message}")
        except SchemaNotFoundError as e:
            errs.append(f"items[{i}]: no schema for {item.get('apiVersion')}/{item.get('kind')} ({e})")
    return errs


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("argo", "k8s"):
        print(__doc__, file=sys.stderr)
        return 2
    text = sys.stdin.read() if sys.argv[2] == "-" else open(sys.argv[2]).read()
    errs = validate_argo(text) if sys.argv[1] == "argo" else validate_k8s(text)
    for e in errs:
        print(e, file=sys.stderr)
    if errs:
        print(f"{len(errs)} violation(s)", file=sys.stderr)
        return 1
    print("valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
