"""Reading a study's TOML configuration, validated once, with one-sentence errors naming the
field (the schema is :mod:`prunus.study.schema`).

A study crosses datasets × models × policies × seeds. Policies name methods from the families'
registries, looked up when the config is validated. Baselines (full data, random subset, RS2,
random pruning) are not configured: the grid always adds them.

Example::

    name = "quickstart"
    seeds = [0, 1, 2]
    keep = [0.3, 0.5]
    targets = ["full-1pp"]

    [[datasets]]
    name = "mnist1d"
    options = { train_size = 4000 }

    [[models]]
    name = "cnn1d"

    [train]
    epochs = 8

    [[policies]]
    score = "el2n"
    select = "hardest"

    [[policies]]
    online = "rs2"

    [[policies]]
    weights = "magnitude"
    sparsity = [0.8]

A retrieval study compares negatives policies (``prunus.negatives.NEGATIVE_POLICIES``) for
fine-tuning an embedding model; ``[negatives]`` holds the settings every run shares (keys of
:class:`prunus.negatives.policy.PolicyConfig`), a policy's ``options`` override them, and the
grid adds in-batch negatives (the reference), random negatives (the random baseline) and the
pre-trained model. ``datasets`` and ``models`` may then be left out::

    seeds = 3
    targets = []

    [negatives]
    train_pairs = 512

    [[policies]]
    negatives = "mined-margin"
    options = { margin = 0.05 }
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from prunus.errors import PrunusError
from prunus.study.messages import PolicyError, describe_error
from prunus.study.schema import StudyConfig


def load_config(path: str | Path) -> StudyConfig:
    """Read and validate a study TOML file.

    Raises:
        PrunusError: missing file, malformed TOML, unknown key, bad value or unknown method,
            as one sentence naming the field (e.g. ``policies[2].keep[0]``).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PrunusError(f"config file {str(path)!r} does not exist.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PrunusError(f"config file {str(path)!r} could not be read ({exc}).") from None
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PrunusError(f"{path.name} is not valid TOML: {exc}.") from None
    values.setdefault("name", path.stem)
    return parse_config(values, source=path.name)


def parse_config(values: dict[str, Any], source: str = "config") -> StudyConfig:
    """Validate a study given as a dict (what ``tomllib`` returns).

    Strict: a number written as a string (``keep = ["0.5"]``) is refused, not converted.
    """
    try:
        return StudyConfig.model_validate(values, strict=True)
    except ValidationError as exc:
        raise PrunusError(describe_error(exc, source)) from None
    except PolicyError as exc:  # raised outside pydantic's wrapping in some versions
        raise PrunusError(str(exc)) from None
