"""The experiment spec: YAML validated by frozen pydantic models (unknown keys are errors).

* ``schema``: the run spec's models and every default that changes results (the only place they are written).
* ``launcher``: a study file's ``launcher:`` section (how cells are dispatched; not part of any run).
* ``loading``: files -> runs (strict YAML, ``--set`` overrides, ``model:`` presets, ``matrix:`` expansion).
* ``messages``: pydantic errors as one line each, naming the field.
* ``views``: a spec as a dict, YAML, dotted keys, JSON schema.

Import from here (``from occctl.spec import Spec, load_spec``); the modules are the layout, not the interface.
"""

from occctl.spec.launcher import LauncherSpec, SlurmSpec, validate_launcher
from occctl.spec.loading import (MODEL_PRESETS, expand_model_preset, load_spec, load_specs, load_study,
                                 parse_override, read_spec_file, set_dotted, validate_spec)
from occctl.spec.messages import describe_error
from occctl.spec.schema import (CLIP_DEFAULTS, DATASET_KEYS, EMBEDDED_TASKS, HUB_ID, NAME_PATTERN, OCC_PRESETS,
                                TINY_CONTEXT, AlgorithmSpec, EvalSpec, ModelSpec, MtpSpec, OccSpec, OverlongSpec,
                                PolicyClipSpec, Spec, StrictModel, TaskSpec, TinyModelSpec, TrackingSpec, TrainSpec,
                                WarmupSpec)
from occctl.spec.views import dump_spec, flatten, spec_schema, spec_to_dict

__all__ = ["CLIP_DEFAULTS", "DATASET_KEYS", "EMBEDDED_TASKS", "HUB_ID", "MODEL_PRESETS", "NAME_PATTERN",
           "OCC_PRESETS", "TINY_CONTEXT", "AlgorithmSpec", "EvalSpec", "LauncherSpec", "ModelSpec", "MtpSpec",
           "OccSpec", "OverlongSpec", "PolicyClipSpec", "SlurmSpec", "Spec", "StrictModel", "TaskSpec",
           "TinyModelSpec", "TrackingSpec", "TrainSpec", "WarmupSpec", "describe_error", "dump_spec",
           "expand_model_preset", "flatten", "load_spec", "load_specs", "load_study", "parse_override",
           "read_spec_file", "set_dotted", "spec_schema", "spec_to_dict", "validate_launcher", "validate_spec"]
