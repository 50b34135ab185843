"""The study config's schema: pydantic models whose validators check every field once, and
the checks that look policies' methods up in the families' registries.

Policies name methods from the data and weight families' registries
(``prunus.data.SCORE_METHODS`` / ``SELECT_POLICIES``, ``prunus.data.online.ONLINE_METHODS``,
``prunus.weights.WEIGHT_METHODS``, ``prunus.negatives.NEGATIVE_POLICIES``), looked up when the
config is validated, so a new method needs no change here. The TOML format is described in
:mod:`prunus.study.config`; error messages come from :mod:`prunus.study.messages`.
"""

from __future__ import annotations

import inspect
import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from prunus.config import StrictModel, TrainConfig
from prunus.errors import PrunusError, choice_error, setting_error
from prunus.study import plugins
from prunus.study.messages import PolicyError, describe_error

Fraction = Annotated[float, Field(gt=0, le=1)]
Sparsity = Annotated[float, Field(gt=0, lt=1)]
TARGET_PATTERN = re.compile(r"^full-(\d+(?:\.\d+)?)pp$")
RELATIVE_TARGET = re.compile(r"^full\+(\d+(?:\.\d+)?)%$")  # lower-is-better metrics


class DatasetConfig(StrictModel):
    """One dataset: a registry name or a local file, its loader options and label noise."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)
    noise: float = Field(0.0, ge=0, lt=1)
    noise_seed: int = Field(0, ge=0)
    noise_kind: Literal["symmetric", "pairs", "instance"] = "symmetric"
    label: str | None = None

    @model_validator(mode="after")
    def _known_dataset(self) -> DatasetConfig:
        from prunus.datasets.registry import FILE_SUFFIXES, get_entry

        if self.name.endswith(FILE_SUFFIXES) or Path(self.name).is_dir():
            if not Path(self.name).exists():
                raise ValueError(f"file {self.name!r} does not exist")
            return self
        try:
            allowed = get_entry(self.name).options()
        except PrunusError as exc:
            raise ValueError(str(exc).removeprefix("dataset ")) from None
        unknown = sorted(set(self.options) - set(allowed))
        if unknown:
            names = ", ".join(sorted(allowed)) or "none"
            raise ValueError(f"option {unknown[0]!r} is not one of: {names}")
        return self

    @property
    def display(self) -> str:
        return self.label or self.name


class ModelConfig(StrictModel):
    """One model: a registry name or ``package.module:factory``, with its options."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)
    label: str | None = None

    @field_validator("name")
    @classmethod
    def _known_model(cls, name: str) -> str:
        from prunus.models import resolve_factory

        try:
            resolve_factory(name)
        except PrunusError as exc:
            raise ValueError(str(exc).removeprefix("model ")) from None
        return name

    @property
    def display(self) -> str:
        return self.label or self.name


class ProxyConfig(StrictModel):
    """How a static score is computed: short proxy runs of ``model``, averaged over ``seeds``.

    ``epochs`` defaults to ⌈20%⌉ of the study's epochs (at least 1; trajectory methods at least
    their ``default_epochs``, see :func:`prunus.data.scoring.default_proxy_epochs`), trained on
    the study's LR schedule as the first epochs of a full run; ``model`` defaults to the run's model; ``train``
    overrides the study's training settings for the proxy runs; ``options`` are the score
    method's own settings (e.g. ``kind = "margin"`` for uncertainty).
    """

    model: str | None = None
    model_options: dict[str, Any] = Field(default_factory=dict)
    epochs: int | None = Field(None, ge=1)
    seeds: list[Annotated[int, Field(ge=0)]] | Annotated[int, Field(ge=1)] = Field(
        2, validate_default=True)
    train: dict[str, Any] = Field(default_factory=dict)
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("seeds")
    @classmethod
    def _seed_list(cls, seeds: list[int] | int) -> list[int]:
        seeds = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
        if not seeds:
            raise ValueError("must name at least one seed")
        return seeds

    @field_validator("train")
    @classmethod
    def _train_overrides(cls, train: dict[str, Any]) -> dict[str, Any]:
        return check_train_overrides(train)


class PolicyConfig(StrictModel):
    """One policy: exactly one of ``score`` or ``scores`` (static data), ``online``,
    ``weights`` or ``negatives``.

    Static: ``score`` method, ``select`` policy (hardest, easiest, band, ccs…), ``stratify``,
    ``select_options`` (e.g. CCS's ``beta``), ``proxy`` (how scores are computed). Instead of
    ``score``, ``scores`` names a precomputed score table (a ``.parquet`` file written by
    ``prunus score``); it must have been made on the study's dataset (checked before any run)
    and each run selecting from it is charged the cost recorded in its metadata. With
    ``score = "label_issue"``, ``select`` may also be ``remove_issues`` (train without the
    flagged examples; the grid adds the same number removed at random) or ``relabel_issues``
    (flagged examples relabelled to their suggested label); these take no ``keep``.
    Online: ``online`` method and its ``options``. Weights: ``weights`` method and its
    ``options``. Negatives: a negatives policy and its ``options`` (over the study's
    ``[negatives]`` settings). ``keep`` / ``sparsity`` default to the study's lists; ``train``
    overrides training settings for this policy's runs; ``label`` names it in the report.
    """

    score: str | None = None
    scores: str | None = None
    select: str = "hardest"
    stratify: bool = True
    select_options: dict[str, Any] = Field(default_factory=dict)
    proxy: ProxyConfig = Field(default_factory=ProxyConfig)
    online: str | None = None
    weights: str | None = None
    negatives: str | None = None
    lm: str | None = None
    oneshot: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    keep: list[Fraction] | None = None
    sparsity: list[Sparsity] | None = None
    train: dict[str, Any] = Field(default_factory=dict)
    label: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> PolicyConfig:
        kinds = [k for k in KINDS if getattr(self, k) is not None]
        if self.scores is not None:
            if self.score is not None:
                raise ValueError("takes one of score (computed by the study) or scores (a "
                                 "precomputed table), not both")
            kinds.append("scores")
        if len(kinds) != 1:
            raise ValueError("needs exactly one of score, scores, online, weights, negatives, "
                             "lm or oneshot")
        if self.kind != "static" and self.select_options:
            raise ValueError("select_options applies only to static (score) policies")
        if self.kind in ("negatives", "lm", "oneshot"):
            names = {"negatives": ("keep", "sparsity"), "lm": ("sparsity",),
                     "oneshot": ("keep",)}[self.kind]
            for name in names:
                if getattr(self, name) is not None:
                    raise ValueError(f"{name} does not apply to a {self.kind} policy")
            if self.train:
                raise ValueError(f"train does not apply to a {self.kind} policy; set its options")
        if self.kind == "weights" and self.keep is not None:
            raise ValueError("keep applies to data policies; a weight policy takes sparsity")
        if self.kind in ("static", "online") and self.sparsity is not None:
            raise ValueError("sparsity applies to weight policies; a data policy takes keep")
        if self.kind == "static" and self.select in LABEL_SELECTS:
            if self.score != LABEL_SCORE:
                raise ValueError(f"select {self.select!r} needs score = {LABEL_SCORE!r}, whose "
                                 f"table flags the issues (got score {self.score!r})")
            if self.keep is not None:
                raise ValueError(f"keep does not apply to select {self.select!r}: the flagged "
                                 "examples decide what is removed or relabelled")
        check_train_overrides(self.train)
        return self

    @field_validator("scores")
    @classmethod
    def _table_file(cls, scores: str | None) -> str | None:
        if scores is not None and not scores.endswith(".parquet"):
            raise ValueError(f"must be a score table file ending in .parquet (got {scores!r})")
        if scores is not None and not Path(scores).is_file():
            raise ValueError(f"file {scores!r} does not exist")
        return scores

    @property
    def label_arm(self) -> bool:
        """Whether this is a label-issue arm (``remove_issues`` / ``relabel_issues``)."""
        return self.kind == "static" and self.select in LABEL_SELECTS

    @property
    def kind(self) -> Literal["static", "online", "weights", "negatives", "lm", "oneshot"]:
        if self.score is not None or self.scores is not None:
            return "static"
        if self.online is not None:
            return "online"
        if self.weights is not None:
            return "weights"
        if self.negatives is not None:
            return "negatives"
        return "lm" if self.lm is not None else "oneshot"

    @property
    def method(self) -> str:
        return (self.score or self.scores or self.online or self.weights or self.negatives
                or self.lm or self.oneshot or "")

    @property
    def display(self) -> str:
        if self.label:
            return self.label
        if self.label_arm:
            return display_name(self.select)
        if self.scores is not None:
            return f"{Path(self.scores).stem}-{display_name(self.select)}"
        if self.kind == "static":
            return f"{display_name(self.method)}-{display_name(self.select)}"
        return display_name(self.method)


KINDS = ("score", "online", "weights", "negatives", "lm", "oneshot")
LABEL_SCORE = "label_issue"  # the score method whose table has is_issue and suggested_label
LABEL_SELECTS = ("remove_issues", "relabel_issues")


class ExecutionConfig(StrictModel):
    """Where runs execute. ``workers`` > 1 uses a process pool; ``threads`` per run (0: auto).
    On Ray (``executor = "ray"``, cluster ``ray_address``) each run is a task requesting
    ``cpus_per_run`` CPUs and ``gpus_per_run`` GPUs."""

    executor: Literal["local", "ray"] = "local"
    workers: int = Field(1, ge=1)
    threads: int = Field(0, ge=0)
    ray_address: str | None = None
    cpus_per_run: float = Field(1.0, gt=0)
    gpus_per_run: float = Field(0.0, ge=0)


class StudyConfig(StrictModel):
    """A whole study; see the module docstring for an example."""

    name: str = "study"
    seeds: list[Annotated[int, Field(ge=0)]] | Annotated[int, Field(ge=1)] = Field(
        3, validate_default=True)
    keep: list[Fraction] = Field(default_factory=lambda: [0.5])
    sparsity: list[Sparsity] = Field(default_factory=list)
    targets: list[float | str] = Field(default_factory=lambda: ["full-1pp"])
    random_stratify: bool = True
    cross: bool = False
    datasets: list[DatasetConfig] = Field(default_factory=list)
    models: list[ModelConfig] = Field(default_factory=list)
    train: TrainConfig = Field(default_factory=TrainConfig)
    negatives: dict[str, Any] = Field(default_factory=dict)
    lm: dict[str, Any] = Field(default_factory=dict)
    oneshot: dict[str, Any] = Field(default_factory=dict)
    policies: list[PolicyConfig] = Field(default_factory=list)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)

    @field_validator("seeds")
    @classmethod
    def _seed_list(cls, seeds: list[int] | int) -> list[int]:
        seeds = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
        if not seeds:
            raise ValueError("must name at least one seed (an empty list gives no runs)")
        if len(set(seeds)) != len(seeds):
            raise ValueError("must not repeat a seed")
        return seeds

    @field_validator("keep", "sparsity")
    @classmethod
    def _distinct(cls, values: list[float]) -> list[float]:
        if len(set(values)) != len(values):
            raise ValueError("must not repeat a value")
        return sorted(values)

    @model_validator(mode="before")
    @classmethod
    def _perplexity_targets(cls, values: Any) -> Any:
        """An lm or oneshot study that names no targets gets a perplexity target."""
        if isinstance(values, dict) and "targets" not in values and any(
                isinstance(p, dict) and ("lm" in p or "oneshot" in p)
                for p in values.get("policies") or []):
            values = {**values, "targets": [DEFAULT_PERPLEXITY_TARGET]}
        return values

    @field_validator("targets")
    @classmethod
    def _targets(cls, targets: list[float | str]) -> list[float | str]:
        for target in targets:
            if isinstance(target, str):
                if not (TARGET_PATTERN.match(target) or RELATIVE_TARGET.match(target)):
                    raise ValueError(
                        f"must be accuracies in (0, 1] or 'full-<N>pp' such as 'full-1pp' "
                        f"(perplexities above 0 or 'full+<N>%' in an lm study; got {target!r})"
                    )
            elif not 0 < target:
                raise ValueError(f"must be accuracies in (0, 1] (got {target!r})")
        return targets

    @field_validator("train", mode="before")
    @classmethod
    def _no_seed(cls, train: Any) -> Any:
        if isinstance(train, dict) and "seed" in train:
            raise ValueError("seed is set per run by the study's seeds list; remove it")
        return train

    @field_validator("datasets", "models")
    @classmethod
    def _distinct_labels(cls, values: list) -> list:
        labels = [v.display for v in values]
        if len(set(labels)) != len(labels):
            raise ValueError("entries must have distinct names; set label to tell them apart")
        return values

    @model_validator(mode="after")
    def _policies(self) -> StudyConfig:
        own_task_only = bool(self.policies) and all(
            p.kind in OWN_TASK_KINDS for p in self.policies)
        for name in ("datasets", "models"):
            if not getattr(self, name) and not own_task_only:
                raise PolicyError(f"{name} must list at least one entry (only a study of "
                                  "negatives, lm or oneshot policies alone may leave it "
                                  "out).")
        for i, target in enumerate(self.targets):
            if self.lower_is_better and TARGET_PATTERN.match(str(target)):
                raise PolicyError(f"targets[{i}]: this study's metric is perplexity (lower is "
                                  f"better): use perplexities or 'full+<N>%' (got {target!r}).")
            if not self.lower_is_better and (RELATIVE_TARGET.match(str(target)) or
                                    not isinstance(target, str) and target > 1):
                raise PolicyError(f"targets[{i}] must be an accuracy in (0, 1] or "
                                  f"'full-<N>pp' such as 'full-1pp' (got {target!r}).")
        if self.negatives:
            check_negatives("negatives", self.negatives, {})
        if self.lm:
            check_lm("lm", self.lm, {})
        if self.oneshot:
            check_oneshot("oneshot", self.oneshot, {})
        seen: dict[str, int] = {}
        for i, policy in enumerate(self.policies):
            where = f"policies[{i}]"
            if policy.kind == "negatives":
                check_negatives(f"{where}.options", self.negatives, policy.options,
                                policy.negatives)
            elif policy.kind == "lm":
                if policy.keep is not None and self.lm_keeps_of(policy) == [1.0] \
                        and policy.keep != [1.0]:
                    raise PolicyError(f"{where}.keep does not apply to {policy.lm!r}, which "
                                      "trains on the whole pool; set options.token_keep.")
                for keep in self.lm_keeps_of(policy):
                    check_lm(f"{where}.options", self.lm, policy.options, policy.lm, keep)
            elif policy.kind == "oneshot":
                sparsities = self.oneshot_sparsities_of(policy)
                if sparsities == [None] and policy.sparsity is not None:
                    raise PolicyError(f"{where}.sparsity does not apply to an N:M pattern, "
                                      "whose sparsity is N/M; remove it.")
                if not sparsities:
                    raise PolicyError(f"{where}.sparsity must list at least one sparsity in "
                                      "(0, 1) (or set the study's sparsity list, or an N:M "
                                      "pattern).")
                for sparsity in self.oneshot_sparsities_of(policy):
                    check_oneshot(f"{where}.options", self.oneshot, policy.options,
                                  policy.oneshot, sparsity)
            else:
                check_method(policy, where, self.keeps_of(policy), self.sparsities_of(policy))
            if policy.kind == "static":
                check_static(policy, where, self.train.epochs)
            if policy.kind == "weights" and not (policy.sparsity or self.sparsity):
                raise PolicyError(f"{where}.sparsity must list at least one sparsity in (0, 1) "
                                  "(or set the study's sparsity list).")
            reserved = RESERVED_LABELS[policy.kind]
            if policy.display in reserved and (policy.label or policy.options or policy.train):
                raise PolicyError(
                    f"{where}.label: {policy.display!r} names a baseline the study adds itself; "
                    "give this policy its own label."
                )
            if policy.display in seen:
                raise PolicyError(
                    f"{where}.label: {policy.display!r} is already the name of "
                    f"policies[{seen[policy.display]}]; give one of them another label."
                )
            seen[policy.display] = i
        return self

    def keeps_of(self, policy: PolicyConfig) -> list[float]:
        """The keep fractions a data policy runs at (none for a label-issue arm)."""
        if policy.label_arm:
            return []
        return sorted(policy.keep) if policy.keep is not None else list(self.keep)

    def sparsities_of(self, policy: PolicyConfig) -> list[float]:
        """The sparsities a weight policy runs at."""
        return sorted(policy.sparsity) if policy.sparsity is not None else list(self.sparsity)

    def negatives_of(self, policy: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
        """The settings of a negatives run: the study's ``[negatives]``, then the policy's."""
        return {**self.negatives, **(options or {}), "policy": policy}

    def lm_keeps_of(self, policy: PolicyConfig) -> list[float]:
        """The keeps an LM policy runs at: the keep list for a document selection, 1 for a
        policy that trains on the whole pool (Rho-1 selects tokens, not documents)."""
        from prunus.text.study import TOKEN_POLICIES

        return [1.0] if policy.lm in TOKEN_POLICIES else self.keeps_of(policy)

    def lm_of(self, policy: str, options: dict[str, Any] | None = None,
              keep: float = 1.0) -> dict[str, Any]:
        """The settings of an LM run: the study's ``[lm]``, then the policy's options."""
        return {**self.lm, **(options or {}), "policy": policy, "keep": keep}

    @property
    def has_negatives(self) -> bool:
        return any(p.kind == "negatives" for p in self.policies)

    def oneshot_sparsities_of(self, policy: PolicyConfig) -> list[float | None]:
        """The sparsities a oneshot policy prunes to: its (or the study's) sparsity list, or
        one ``None`` for an N:M pattern, whose sparsity is N/M."""
        if {**self.oneshot, **policy.options}.get("pattern", "unstructured") != "unstructured":
            return [None]
        return [float(s) for s in self.sparsities_of(policy)]

    def oneshot_of(self, method: str, options: dict[str, Any] | None = None,
                   sparsity: float | None = None, recovery: str = "none") -> dict[str, Any]:
        """The settings of a oneshot run: the study's ``[oneshot]`` (its ``recoveries`` list
        left out), then the policy's options, then the arm's method, sparsity and recovery."""
        shared = {k: v for k, v in self.oneshot.items() if k != "recoveries"}
        values = {**shared, **(options or {}), "method": method, "recovery": recovery}
        if sparsity is not None:
            values["sparsity"] = sparsity
        return values

    @property
    def oneshot_recoveries(self) -> list[str]:
        """The recovery-data policies of a oneshot study, ``none`` (the reference) and
        ``random`` (the random baseline) always among them."""
        named = self.oneshot.get("recoveries", ["random"])
        return ["none", *dict.fromkeys(["random", *named])]

    @property
    def has_lm(self) -> bool:
        return any(p.kind == "lm" for p in self.policies)

    @property
    def has_oneshot(self) -> bool:
        return any(p.kind == "oneshot" for p in self.policies)

    @property
    def lower_is_better(self) -> bool:
        """Whether the study's metric is a perplexity (lm and oneshot studies)."""
        return self.has_lm or self.has_oneshot

    def comparable(self) -> dict[str, Any]:
        """The settings that decide results (execution settings left out), for resume checks."""
        return json.loads(self.model_dump_json(exclude={"execution"}))


RESERVED_LABELS = {
    "static": ("full data", "random"),
    "online": ("full data", "random", "RS2"),
    "weights": ("dense", "random pruning"),
    "negatives": ("in-batch", "random", "pre-trained"),
    "lm": ("full pool", "random", "target sample", "random tokens"),
    "oneshot": ("dense", "random pruning"),
}
DEFAULT_PERPLEXITY_TARGET = "full+10%"  # an lm or oneshot study's targets, when it names none
OWN_TASK_KINDS = ("negatives", "lm", "oneshot")  # policies that need no datasets or models


def check_train_overrides(train: dict[str, Any]) -> dict[str, Any]:
    """Training overrides must be :class:`TrainConfig` fields other than ``seed``."""
    allowed = set(TrainConfig.model_fields) - {"seed"}
    for key in train:
        if key not in allowed:
            raise ValueError(
                f"has unknown training setting {key!r}; allowed: {', '.join(sorted(allowed))}"
            )
    try:
        TrainConfig.model_validate(train, strict=True)
    except ValidationError as exc:
        raise ValueError(f"setting {describe_error(exc).rstrip('.')}") from None
    return train


def check_method(policy: PolicyConfig, where: str, keeps: list[float],
                 sparsities: list[float]) -> None:
    """Unknown method or selection names list the valid ones, looked up in the registries now;
    each policy's settings are tried once at every keep fraction / sparsity it will run at."""
    if policy.kind == "static":
        methods = plugins.score_methods()
        if policy.scores is not None and policy.proxy != ProxyConfig():
            raise PolicyError(f"{where}.proxy does not apply to a precomputed table "
                              f"({where}.scores): its proxy runs were made with the table.")
        if policy.score is not None and policy.score not in methods:
            raise PolicyError(str(choice_error(f"{where}.score", policy.score, methods)))
        policies = plugins.select_policies()
        if policy.select not in (*policies, *LABEL_SELECTS):
            raise PolicyError(str(choice_error(f"{where}.select", policy.select,
                                                  [*policies, *LABEL_SELECTS])))
        unknown = plugins.unknown_score_option(policy.proxy.options)
        if unknown:
            raise PolicyError(f"{where}.proxy.options: {unknown!r} is not a setting of "
                              f"score method {policy.score!r}.")
        settings = select_settings(policy.select)
        for key in policy.select_options:
            if settings is not None and key not in settings:
                raise PolicyError(f"{where}.select_options: " + str(setting_error(
                    key, f"select policy {policy.select!r}", settings)))
        for keep in keeps:
            dry_run(f"{where}.select_options", plugins.try_select, policy.select, keep,
                    policy.stratify, policy.select_options)
        if policy.proxy.model is not None:
            try:
                ModelConfig(name=policy.proxy.model)
            except ValidationError:
                from prunus.models import list_models

                raise PolicyError(str(choice_error(
                    f"{where}.proxy.model", policy.proxy.model,
                    [*list_models(), "package.module:factory"],
                ))) from None
    elif policy.kind == "online":
        methods = plugins.online_methods()
        if policy.online not in methods:
            raise PolicyError(str(choice_error(f"{where}.online", policy.online, methods)))
        for keep in keeps:
            dry_run(f"{where}.options", plugins.online_callback, policy.online, keep, 0,
                    **policy.options)
    else:
        methods = plugins.weight_methods()
        if policy.weights not in methods:
            raise PolicyError(str(choice_error(f"{where}.weights", policy.weights, methods)))
        for sparsity in sparsities:
            dry_run(f"{where}.options", plugins.sparsifier, policy.weights, sparsity, 0,
                    **policy.options)


def select_settings(policy: str) -> list[str] | None:
    """The ``select_options`` selection policy ``policy`` takes: its own registered options
    (``ccs``: beta, bins) and the keywords of ``prunus.data.select`` that no policy owns
    (column, return_weights); the study sets the fraction, stratification, seed and dataset.
    None for a name that is not a registered selection policy (the label-issue selects)."""
    from prunus.data import select
    from prunus.registry import SELECT

    if policy not in SELECT:
        return None
    owned = {name for entry in SELECT.names() for name in SELECT.entry(entry).options()}
    fixed = {"stratify", "seed", "dataset"} | owned
    shared = [name for name, p in inspect.signature(select).parameters.items()
              if p.kind is p.KEYWORD_ONLY and name not in fixed]
    return [*shared, *SELECT.entry(policy).options()]


def check_static(policy: PolicyConfig, where: str, study_epochs: int) -> None:
    """A score policy's settings live in ``proxy``; its proxy runs fit inside a training run."""
    if policy.options:
        raise PolicyError(
            f"{where}.options does not apply to a score policy; put the score method's "
            f"settings in {where}.proxy.options (got {sorted(policy.options)})."
        )
    epochs = policy.train.get("epochs", study_epochs)
    if policy.proxy.epochs is not None and policy.proxy.epochs > epochs:
        raise PolicyError(
            f"{where}.proxy.epochs must be at most the training epochs ({epochs}): proxy runs "
            f"are the first epochs of a training run (got {policy.proxy.epochs})."
        )


def check_negatives(field: str, shared: dict[str, Any], options: dict[str, Any],
                    policy: str | None = None) -> None:
    """A negatives policy's name and merged settings, validated now (one sentence per error)."""
    policies = plugins.negative_policies()
    if policy is not None and policy not in policies:
        raise PolicyError(str(choice_error(field.removesuffix(".options") + ".negatives",
                                              policy, policies)))
    if "policy" in options or "policy" in shared:
        raise PolicyError(f"{field}.policy is set by the policy itself; remove it.")
    try:
        plugins.check_negatives_settings({**shared, **options, "policy": policy or "in-batch"})
    except PrunusError as exc:
        message = str(exc).rstrip(".").removeprefix("negatives.")
        raise PolicyError(f"{field}.{message}.") from None


def check_lm(field: str, shared: dict[str, Any], options: dict[str, Any],
             policy: str | None = None, keep: float = 1.0) -> None:
    """An LM policy's name and merged settings, validated now (one sentence per error)."""
    from prunus.text.study import BASELINES, LM_POLICIES, check_lm_config

    chosen = [p for p in LM_POLICIES if p not in BASELINES]
    if policy is not None and policy not in chosen:
        raise PolicyError(str(choice_error(field.removesuffix(".options") + ".lm", policy,
                                           chosen)))
    for name in ("policy", "keep"):
        if name in options or name in shared:
            where = "the policy itself" if name == "policy" else "the study's keep list"
            raise PolicyError(f"{field}.{name} is set by {where}; remove it.")
    try:
        check_lm_config({**shared, **options, "policy": policy or "full", "keep": keep})
    except PrunusError as exc:
        message = str(exc).rstrip(".").removeprefix("lm.")
        raise PolicyError(f"{field}.{message}.") from None


def check_oneshot(field: str, shared: dict[str, Any], options: dict[str, Any],
                  method: str | None = None, sparsity: float | None = None) -> None:
    """A oneshot policy's method and merged settings, validated now (one sentence per error)."""
    from prunus.weights.pretrained import METHODS
    from prunus.weights.study import RECOVERIES, check_oneshot_config

    chosen = [m for m in METHODS if m != "random"]
    if method is not None and method not in chosen:
        raise PolicyError(str(choice_error(field.removesuffix(".options") + ".oneshot", method,
                                           chosen)))
    for name in ("method", "recovery", "sparsity", "recoveries"):
        if name in options or (name in shared and name != "recoveries"):
            raise PolicyError(f"{field}.{name} is set by the study's grid (the policy's name, "
                              "its sparsity list and oneshot.recoveries); remove it.")
    recoveries = shared.get("recoveries", ["random"])
    if not isinstance(recoveries, list) or any(r not in RECOVERIES[1:] for r in recoveries):
        raise PolicyError(f"oneshot.recoveries must be a list of {', '.join(RECOVERIES[1:])} "
                          f"(got {recoveries!r}).")
    values = {k: v for k, v in shared.items() if k != "recoveries"}
    values = {**values, **options, "method": method or "dense"}
    if sparsity is not None:
        values["sparsity"] = sparsity
    try:
        check_oneshot_config(values)
    except PrunusError as exc:
        message = str(exc).rstrip(".").removeprefix("oneshot.")
        raise PolicyError(f"{field}.{message}.") from None


def dry_run(field: str, build, *args, **kwargs) -> None:
    """Build a policy's callback (or selection) once now, so bad settings fail before any run."""
    try:
        build(*args, **kwargs)
    except PrunusError as exc:
        raise PolicyError(f"{field}: {str(exc).rstrip('.')}.") from None
    except TypeError as exc:
        raise PolicyError(f"{field}: {exc}.") from None


DISPLAY_NAMES = {
    "el2n": "EL2N", "grand": "GraNd", "aum": "AUM", "rs2": "RS2", "ccs": "CCS",
    "snip": "SNIP", "grasp": "GraSP", "synflow": "SynFlow", "rigl": "RigL", "set": "SET",
    "gmp": "GMP", "imp": "IMP", "infobatch": "InfoBatch", "rho_loss": "RHO-LOSS",
    "granet": "GraNet", "wanda": "Wanda", "pretrained": "pre-trained",
    "dsir": "DSIR", "color-filter": "CoLoR-Filter", "rho1": "Rho-1",
    "embedding-similarity": "embedding similarity", "quality-classifier": "quality classifier",
    "label_issue": "label issue", "remove_issues": "label issues removed",
    "relabel_issues": "label issues relabelled",
}


def display_name(name: str) -> str:
    """A method's name as people write it (``el2n`` -> ``EL2N``); unknown names unchanged."""
    return DISPLAY_NAMES.get(name, name)


def target_value(target: float | str, full_accuracy: float, direction: int = 1) -> float:
    """A target value of the metric: absolute; ``full-<N>pp`` below full data's mean final
    accuracy; ``full+<N>%`` above the reference's mean where lower is better (perplexity).
    A target that does not fit the metric's direction is NaN (never reached)."""
    if isinstance(target, str):
        match = TARGET_PATTERN.match(target)
        if match is not None:
            return full_accuracy - float(match.group(1)) / 100 if direction == 1 else math.nan
        match = RELATIVE_TARGET.match(target)
        assert match is not None  # validated
        return full_accuracy * (1 + float(match.group(1)) / 100) if direction == -1 else math.nan
    return float(target)

