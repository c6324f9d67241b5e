"""Pydantic's validation errors as one line each, naming the field (and the valid keys of an unknown one)."""

from __future__ import annotations

import reprlib
from typing import Any

from pydantic import BaseModel

from occctl.errors import did_you_mean
from occctl.spec.schema import Spec


def describe_error(err: dict[str, Any], root: type[BaseModel] | None = None) -> str:
    """One pydantic error as one line naming the field (``root``: the model validated; default Spec)."""
    loc = [str(p) for p in err["loc"]]
    field = ".".join(loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        parent = _model_at(loc[:-1], root or Spec)
        valid = sorted(parent.model_fields) if parent else []
        hint = did_you_mean(loc[-1], valid)
        return f"{field}: unknown key{hint}; valid keys: {', '.join(valid)}"
    msg = err["msg"].removeprefix("Value error, ")
    got = err.get("input")
    shown = "" if err["type"] == "missing" or isinstance(got, dict) else f"; got {_short_repr(got)}"
    return f"{field}: {msg}{shown}"


def _short_repr(value: Any) -> str:
    """A bounded repr (an alias bomb must not be expanded into the message)."""
    r = reprlib.Repr()
    r.maxstring = r.maxother = 100
    r.maxlevel, r.maxlist, r.maxdict = 2, 4, 4
    return r.repr(value)[:120]


def _model_at(loc: list[str], root: type[BaseModel]) -> type[BaseModel] | None:
    model = root
    for part in loc:
        info = model.model_fields.get(part)
        ann = getattr(info, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model

