"""Study grid: datasets × models × data arms × weight arms × seeds, baselines included.

A *data arm* decides which examples a run trains on (full data, a random subset, a static
selection from a score table, or an online method); a *weight arm* decides which weights
survive (dense, random pruning, or a sparsity method). Baselines are added here, always:
full data; a random subset at every keep fraction; RS2 at every keep fraction (when the online
family offers it); random pruning at every sparsity (when the weights family offers it).
Every arm runs with every seed, and the seed fixes the initialisation and data order, so runs
are paired by seed.

A retrieval study (negatives policies) has one setting per (retrieval dataset, embedding model)
named in its ``[negatives]`` settings, and its own baselines: in-batch negatives (the reference,
in the role of full data), random negatives (the random baseline) and the pre-trained model.

Static scores are computed once per (dataset fingerprint, proxy model, method, proxy settings)
— a :class:`ScoreJob` — and every run that uses the table is charged an equal share of its cost.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from typing import Any

from prunus.study import plugins
from prunus.study.config import PolicyConfig, StudyConfig, display_name

FULL, RANDOM, STATIC, ONLINE, NEGATIVES = "full", "random", "static", "online", "negatives"
CLASSIFICATION, RETRIEVAL = "classification", "retrieval"
DENSE, WEIGHTS = "dense", "weights"
FULL_LABEL, RANDOM_LABEL = "full data", "random"
DENSE_LABEL, RANDOM_PRUNING_LABEL = "dense", "random pruning"


@dataclass(frozen=True)
class DataArm:
    """Which examples a run trains on."""

    kind: str  # full | random | static | online | negatives
    label: str
    keep: float = 1.0
    method: str | None = None  # score method (static), online method or negatives policy
    select: str | None = None
    stratify: bool = True
    select_options: str = "{}"  # JSON, so that arms stay hashable
    options: str = "{}"
    baseline: bool = False


@dataclass(frozen=True)
class WeightArm:
    """Which weights survive."""

    kind: str  # dense | weights
    label: str
    sparsity: float = 0.0
    method: str | None = None
    options: str = "{}"
    baseline: bool = False


@dataclass(frozen=True)
class ScoreJob:
    """One score table to compute (or reuse): a method on a dataset with a proxy model."""

    key: str
    dataset: dict[str, Any]
    fingerprint: str
    method: str
    model: str
    model_options: dict[str, Any]
    epochs: int
    full_epochs: int
    seeds: list[int]
    train: dict[str, Any]
    options: dict[str, Any]

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "key"}


@dataclass(frozen=True)
class RunSpec:
    """Everything one training run needs; ``run_id`` hashes the parts that decide its result."""

    run_id: str
    index: int
    setting: str
    dataset: dict[str, Any]
    model: dict[str, Any]
    data: DataArm
    weights: WeightArm
    seed: int
    train: dict[str, Any]
    score_key: str | None = None
    score_shared_by: int = 0
    task: str = CLASSIFICATION  # retrieval: ``train`` holds the negatives run's settings

    @property
    def policy(self) -> str:
        """The arm's name in the report, e.g. ``EL2N-hardest, keep 50%``."""
        return arm_label(self.data, self.weights)

    @property
    def baseline(self) -> bool:
        return (self.data.kind == FULL or self.data.baseline) and (
            self.weights.kind == DENSE or self.weights.baseline
        )


def expand_grid(config: StudyConfig, fingerprints: dict[str, str]) -> tuple[list[RunSpec], list[ScoreJob]]:
    """All runs of a study in execution order (seed by seed) and the score tables they need.

    Args:
        config: the validated study.
        fingerprints: dataset display name -> :attr:`Dataset.fingerprint` (score tables are
            keyed by it).
    """
    planned: list[tuple[str, dict, dict, Arm, int, ScoreJob | None]] = []
    jobs: dict[str, ScoreJob] = {}
    arms = study_arms(config)
    for dataset in config.datasets:
        for model in config.models:
            setting = f"{dataset.display} / {model.display}"
            dataset_spec, model_spec = dataset.model_dump(), model.model_dump()
            for seed in config.seeds:
                for arm in arms:
                    job = None
                    if arm.policy is not None:
                        job = score_job(config, arm.policy, dataset_spec,
                                        fingerprints[dataset.display], model_spec)
                        job = jobs.setdefault(job.key, job)
                    planned.append((setting, dataset_spec, model_spec, arm, seed, job))
    if config.has_negatives:
        arms_by_setting = negatives_arms(config)
        for seed in config.seeds:
            for setting, (dataset_spec, model_spec, setting_arms) in arms_by_setting.items():
                planned += [(setting, dataset_spec, model_spec, arm, seed, None)
                            for arm in setting_arms]
    shared: dict[str, int] = {}
    for *_, job in planned:
        if job is not None:
            shared[job.key] = shared.get(job.key, 0) + 1
    runs = []
    for index, (setting, dataset_spec, model_spec, arm, seed, job) in enumerate(planned):
        if arm.task == RETRIEVAL:
            train = json.loads(arm.train)
            identity = {"task": RETRIEVAL, "data": asdict(arm.data), "seed": seed,
                        "negatives": train}
            runs.append(RunSpec(
                run_id=digest(identity, 12), index=index, setting=setting,
                dataset=dataset_spec, model=model_spec, data=arm.data,
                weights=WeightArm(DENSE, DENSE_LABEL, baseline=True), seed=seed, train=train,
                task=RETRIEVAL,
            ))
            continue
        train = {**config.train.model_dump(exclude={"seed"}), **json.loads(arm.train)}
        identity = {
            "dataset": dataset_spec, "model": model_spec, "data": asdict(arm.data),
            "weights": asdict(arm.weights), "seed": seed, "train": train,
            "score": None if job is None else job.key,
        }
        runs.append(RunSpec(
            run_id=digest(identity, 12),
            index=index,
            setting=setting,
            dataset=dataset_spec,
            model=model_spec,
            data=arm.data,
            weights=arm.weights,
            seed=seed,
            train=train,
            score_key=None if job is None else job.key,
            score_shared_by=0 if job is None else shared[job.key],
        ))
    return runs, list(jobs.values())


@dataclass(frozen=True)
class Arm:
    """One combination a setting runs with every seed: data arm, weight arm, training overrides.

    ``policy`` is the static data policy whose score table the arm needs (else None).
    """

    data: DataArm
    weights: WeightArm
    train: str = "{}"  # JSON of TrainConfig overrides (retrieval: the negatives settings)
    policy: PolicyConfig | None = None
    task: str = CLASSIFICATION

    @property
    def identity(self) -> tuple[str, str, str]:
        return arm_identity(self.data), arm_identity(self.weights), self.train


def negatives_arms(config: StudyConfig) -> dict[str, tuple[dict, dict, list[Arm]]]:
    """Setting label -> (dataset, model, arms) of a retrieval study, baselines first.

    Baselines: in-batch negatives (data kind ``full``: the reference), random negatives (kind
    ``random``, labelled ``random``: the random baseline every policy is paired against) and
    the pre-trained model without fine-tuning.
    """
    from prunus.negatives.policy import check_config

    dense = WeightArm(DENSE, DENSE_LABEL, baseline=True)
    baselines = [(FULL, "in-batch", "in-batch"), (RANDOM, RANDOM_LABEL, "random"),
                 (NEGATIVES, display_name("pretrained"), "pretrained")]
    out: dict[str, tuple[dict, dict, list[Arm]]] = {}
    unique: dict[str, dict[tuple, Arm]] = {}
    entries = [(kind, label, name, {}, True) for kind, label, name in baselines]
    entries += [(NEGATIVES, p.display, p.negatives, p.options, False)
                for p in config.policies if p.kind == "negatives"]
    for kind, label, name, options, baseline in entries:
        settings = check_config(config.negatives_of(name, options)).model_dump(mode="json")
        setting = f"{settings['dataset']} / {settings['model']}"
        dataset_spec = {"name": settings["dataset"], "options": settings["dataset_options"]}
        if setting not in out:
            out[setting] = (dataset_spec, {"name": settings["model"], "options": {}}, [])
            unique[setting] = {}
        data = DataArm(kind, label, method=name, baseline=baseline)
        arm = Arm(data, dense, canonical(settings), task=RETRIEVAL)
        key = (name, arm.train)
        if key not in unique[setting]:
            unique[setting][key] = arm
            out[setting][2].append(arm)
    return out


def study_arms(config: StudyConfig) -> list[Arm]:
    """The arms of one setting, baselines first, duplicates of a baseline dropped."""
    keeps = sorted({k for p in config.policies if p.kind in ("static", "online")
                    for k in config.keeps_of(p)} | set(config.keep))
    sparsities = sorted({s for p in config.policies if p.kind == "weights"
                         for s in config.sparsities_of(p)} | set(config.sparsity))
    online = plugins.online_methods() or ()
    weight_methods = plugins.weight_methods() or ()

    data_arms: list[tuple[DataArm, PolicyConfig | None]] = []
    for keep in keeps:
        data_arms.append((DataArm(RANDOM, RANDOM_LABEL, keep, select="random",
                                  stratify=config.random_stratify, baseline=True), None))
        if "rs2" in online:
            data_arms.append((DataArm(ONLINE, display_name("rs2"), keep, method="rs2",
                                      baseline=True), None))
    for policy in config.policies:
        for keep in config.keeps_of(policy) if policy.kind in ("static", "online") else ():
            if policy.kind == "static":
                arm = DataArm(STATIC, policy.display, keep, method=policy.score,
                              select=policy.select, stratify=policy.stratify,
                              select_options=canonical(policy.select_options))
            else:
                arm = DataArm(ONLINE, policy.display, keep, method=policy.online,
                              options=canonical(policy.options))
            data_arms.append((arm, policy))

    weight_arms: list[tuple[WeightArm, PolicyConfig | None]] = []
    if "random" in weight_methods:
        for sparsity in sparsities:
            weight_arms.append((WeightArm(WEIGHTS, RANDOM_PRUNING_LABEL, sparsity,
                                          method="random", baseline=True), None))
    for policy in config.policies:
        for sparsity in config.sparsities_of(policy) if policy.kind == "weights" else ():
            weight_arms.append((WeightArm(WEIGHTS, policy.display, sparsity,
                                          method=policy.weights,
                                          options=canonical(policy.options)), policy))

    def arm(data: DataArm, dp: PolicyConfig | None, weights: WeightArm,
            wp: PolicyConfig | None) -> Arm:
        train = {**(dp.train if dp else {}), **(wp.train if wp else {})}
        static = dp if dp is not None and dp.kind == "static" else None
        if static is not None and static.select == "random":
            static = None  # a random subset needs no scores
        return Arm(data, weights, canonical(train), static)

    full = DataArm(FULL, FULL_LABEL, baseline=True)
    dense = WeightArm(DENSE, DENSE_LABEL, baseline=True)
    arms = [arm(full, None, dense, None)]
    arms += [arm(d, dp, dense, None) for d, dp in data_arms]
    arms += [arm(full, None, w, wp) for w, wp in weight_arms]
    if config.cross:
        arms += [arm(d, dp, w, wp) for d, dp in data_arms for w, wp in weight_arms]
    unique: dict[tuple[str, str, str], Arm] = {}
    for a in arms:
        unique.setdefault(a.identity, a)
    return list(unique.values())


def arm_identity(arm: DataArm | WeightArm) -> str:
    """What makes two arms the same experiment (labels and baseline flags aside)."""
    values = asdict(arm)
    values.pop("label")
    values.pop("baseline")
    if isinstance(arm, DataArm) and arm.kind == STATIC and arm.select == "random":
        values.update(kind=RANDOM, method=None, select_options="{}")  # a user's own random
    return canonical(values)


def score_job(config: StudyConfig, policy: PolicyConfig, dataset: dict[str, Any],
              fingerprint: str, model: dict[str, Any]) -> ScoreJob:
    """The score table a static policy needs, with every proxy default resolved."""
    proxy = policy.proxy
    epochs = proxy.epochs or max(1, math.ceil(0.2 * config.train.epochs))
    train = config.train.model_dump(exclude={"seed", "epochs"})
    train.update(proxy.train)
    train.pop("epochs", None)
    proxy_model = proxy.model or model["name"]
    model_options = proxy.model_options if proxy.model else model["options"]
    values = {
        "dataset": dataset, "fingerprint": fingerprint, "method": policy.score,
        "model": proxy_model, "model_options": model_options, "epochs": epochs,
        "full_epochs": config.train.epochs, "seeds": list(proxy.seeds), "train": train,
        "options": proxy.options,
    }
    key = f"{policy.score}-{digest(values, 10)}"
    return ScoreJob(key=key, **values)


def arm_label(data: DataArm, weights: WeightArm) -> str:
    """``full data``; ``EL2N-hardest, keep 50%``; ``magnitude, sparsity 80%``; or both.
    Negatives arms (which keep every pair) are named by their policy alone."""
    if data.kind == NEGATIVES or (data.method is not None and data.keep == 1.0
                                  and data.kind in (FULL, RANDOM)):
        return data.label
    parts = []
    if data.kind != FULL or weights.kind == DENSE:
        parts.append(data.label if data.kind == FULL else f"{data.label}, keep {percent(data.keep)}")
    if weights.kind != DENSE:
        parts.append(f"{weights.label}, sparsity {percent(weights.sparsity)}")
    return " + ".join(parts)


def percent(fraction: float) -> str:
    value = 100 * fraction
    return f"{value:.0f}%" if abs(value - round(value)) < 1e-9 else f"{value:g}%"


def canonical(values: Any) -> str:
    return json.dumps(values, sort_keys=True, separators=(",", ":"), default=str)


def digest(values: Any, size: int) -> str:
    return hashlib.blake2b(canonical(values).encode(), digest_size=16).hexdigest()[:size]
