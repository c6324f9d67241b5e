"""A validated spec as plain data: JSON-able dict, YAML text (a run's ``spec.yaml``), dotted keys, JSON schema."""

from __future__ import annotations

from typing import Any

import yaml

from occctl.spec.schema import Spec


def spec_to_dict(spec: Spec) -> dict[str, Any]:
    return spec.model_dump(mode="json")


def dump_spec(spec: Spec) -> str:
    return yaml.safe_dump(spec_to_dict(spec), sort_keys=False)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{full}."))
        else:
            out[full] = value
    return out


def spec_schema() -> dict[str, Any]:
    return Spec.model_json_schema()
