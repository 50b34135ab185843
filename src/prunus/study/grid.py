"""Study grid: datasets × models × data arms × weight arms × seeds, baselines included.

A *data arm* decides which examples a run trains on (full data, a random subset, a static
selection from a score table, an online method, or full data on a shortened schedule); a
*weight arm* decides which weights survive (dense, random pruning, or a sparsity method).
Baselines are added here, always, and each arm names the two it is judged against:

- **same compute** (``compute_baseline``): full data trained for the same number of examples
  backpropagated, its LR schedule shortened to those steps ("just train less"). For a static
  selection, a random subset or RS2 at keep k that is ⌊k·N⌋·epochs, known in advance (one
  arm per keep serves them all). For any other online method the count is only known once the
  arm has run, so the baseline is a *matched* run that waits for the arm's run of the same seed
  and trains for exactly its measured count.
- **random** (``random_baseline``): a random subset at the same keep (static arms); for online
  methods other than RS2, a random subset trained for the arm's measured backprop count (a
  matched run too); random pruning with ERK layer densities on the method's own pruning
  schedule (weight arms). Uniform random pruning at initialisation stays as the weakest
  variant, for reference.

A label-issue policy (``score = "label_issue"`` with ``select = "remove_issues"`` or
``"relabel_issues"``) gives one arm of kind ``labels`` with no keep: the table's flagged examples
are removed, or relabelled to their suggested label. Both are judged against full data; the
removal also against its random baseline, the **same number removed at random** (per class when
``random_stratify``), which needs the table to know that number and so shares it.

Every run evaluates at one compute cadence: each time ``eval_every_examples`` more examples
have been backpropagated (1/20 of the full-data run's examples), so time to target compares
arms checked equally often per unit of compute.

A retrieval study (negatives policies) has one setting per (retrieval dataset, embedding model)
named in its ``[negatives]`` settings, and its own baselines: in-batch negatives (the reference,
in the role of full data), random negatives (the random baseline) and the pre-trained model.

Static scores are computed once per (dataset fingerprint, proxy model, method, proxy settings)
— a :class:`ScoreJob` — and every run that uses the table is charged its whole cost (what a user
running that arm once pays); the amortised share is reported beside it.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from prunus.counts import fraction_count
from prunus.study import plugins
from prunus.study.schema import PolicyConfig, StudyConfig, display_name

FULL, RANDOM, STATIC, ONLINE, NEGATIVES = "full", "random", "static", "online", "negatives"
LM = "lm"  # a language-model data arm (a selection policy or the target sample)
SHORT = "short"  # full data on a schedule shortened to another arm's compute
LABELS = "labels"  # a label-issue arm: flagged examples removed or relabelled, or as many at random
ONESHOT = "oneshot"  # a pretrained model pruned one-shot, then recovered on chosen data (or not)
CLASSIFICATION, RETRIEVAL, LANGUAGE = "classification", "retrieval", "lm"
DENSE, WEIGHTS = "dense", "weights"
FULL_LABEL, RANDOM_LABEL = "full data", "random"
DENSE_LABEL, RANDOM_PRUNING_LABEL = "dense", "random pruning"
EVALUATIONS_PER_FULL_RUN = 20  # the compute cadence: every 1/20 of the full-data run


@dataclass(frozen=True)
class DataArm:
    """Which examples a run trains on."""

    kind: str  # full | random | static | online | negatives | short | labels | lm | oneshot
    label: str
    keep: float = 1.0
    matches: str | None = None  # the policy whose measured backprop count this arm trains for
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
    table: str | None = None  # a precomputed table (``scores = FILE``): read, not computed

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
    compute_baseline: str | None = None  # policy label of the same-compute full-data arm
    random_baseline: str | None = None  # policy label of the random arm it is judged against
    matches: str | None = None  # run_id (same seed) whose measured backprop count it trains for
    dataset_size: int = 0

    @property
    def policy(self) -> str:
        """The arm's name in the report, e.g. ``EL2N-hardest, keep 50%``."""
        return arm_label(self.data, self.weights)

    @property
    def baseline(self) -> bool:
        return (self.data.kind == FULL or self.data.baseline) and (
            self.weights.kind == DENSE or self.weights.baseline
        )


def expand_grid(config: StudyConfig, fingerprints: dict[str, str],
                sizes: dict[str, int] | None = None) -> tuple[list[RunSpec], list[ScoreJob]]:
    """All runs of a study in execution order (seed by seed) and the score tables they need.

    Args:
        config: the validated study.
        fingerprints: dataset display name -> :attr:`Dataset.fingerprint` (score tables are
            keyed by it).
        sizes: dataset display name -> training examples N (for compute budgets and the
            evaluation cadence; a dataset missing here gets neither).
    """
    sizes = sizes or {}
    planned: list[tuple[str, dict, dict, Arm, int, ScoreJob | None, int]] = []
    jobs: dict[str, ScoreJob] = {}
    arms = study_arms(config)
    for dataset in config.datasets:
        for model in config.models:
            setting = f"{dataset.display} / {model.display}"
            dataset_spec, model_spec = dataset.model_dump(), model.model_dump()
            size = sizes.get(dataset.display, 0)
            for seed in config.seeds:
                for arm in arms:
                    job = None
                    if arm.policy is not None:
                        job = score_job(config, arm.policy, dataset_spec,
                                        fingerprints[dataset.display], model_spec)
                        job = jobs.setdefault(job.key, job)
                    planned.append((setting, dataset_spec, model_spec, arm, seed, job, size))
    own_tasks = [negatives_arms(config)] if config.has_negatives else []
    own_tasks += [lm_arms(config)] if config.has_lm else []
    own_tasks += [oneshot_arms(config)] if config.has_oneshot else []
    for arms_by_setting in own_tasks:
        for seed in config.seeds:
            for setting, (dataset_spec, model_spec, setting_arms) in arms_by_setting.items():
                planned += [(setting, dataset_spec, model_spec, arm, seed, None, 0)
                            for arm in setting_arms]
    shared: dict[str, int] = {}
    for *_, job, _ in planned:
        if job is not None:
            shared[job.key] = shared.get(job.key, 0) + 1
    runs: list[RunSpec] = []
    run_of: dict[tuple[str, str, int], str] = {}  # (setting, policy, seed) -> run_id
    for index, (setting, dataset_spec, model_spec, arm, seed, job, size) in enumerate(planned):
        if arm.task in (RETRIEVAL, LANGUAGE, ONESHOT):
            train = json.loads(arm.train)
            identity = {"task": arm.task, "data": asdict(arm.data), "seed": seed,
                        "settings": train}
            if arm.task == RETRIEVAL:  # the key run ids have always been hashed with
                identity["negatives"] = identity.pop("settings")
            runs.append(RunSpec(
                run_id=digest(identity, 12), index=index, setting=setting,
                dataset=dataset_spec, model=model_spec, data=arm.data, weights=arm.weights,
                seed=seed, train=train, task=arm.task, random_baseline=arm.random,
                compute_baseline=arm.compute,
            ))
            continue
        train = {**config.train.model_dump(exclude={"seed"}), **json.loads(arm.train)}
        if size and train.get("eval_every_examples") is None and train.get("eval_every") is None:
            train["eval_every_examples"] = math.ceil(
                size * config.train.epochs / EVALUATIONS_PER_FULL_RUN)
        matches = None
        if arm.data.matches is not None:
            matches = run_of[(setting, arm.data.matches, seed)]
        identity = {
            "dataset": dataset_spec, "model": model_spec, "data": asdict(arm.data),
            "weights": asdict(arm.weights), "seed": seed, "train": train,
            "score": None if job is None else job.key, "matches": matches,
        }
        spec = RunSpec(
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
            compute_baseline=arm.compute,
            random_baseline=arm.random,
            matches=matches,
            dataset_size=size,
        )
        run_of[(setting, spec.policy, seed)] = spec.run_id
        runs.append(spec)
    return runs, list(jobs.values())


def short_schedule(spec: RunSpec, dataset_size: int) -> dict[str, Any]:
    """The training settings of a run; a short-schedule arm at keep k (not a matched one)
    trains for ⌊k·N⌋·epochs examples, the compute of every arm at that keep."""
    if spec.data.kind != SHORT or spec.data.matches is not None \
            or spec.train.get("examples") is not None:
        return spec.train
    examples = fraction_count(spec.data.keep, dataset_size, at_least=1) * spec.train["epochs"]
    return {**spec.train, "examples": examples}


def matched_run(spec: RunSpec, backpropagated: int) -> RunSpec:
    """A matched run made concrete once its source run has measured ``backpropagated``.

    Full data on a short schedule trains for exactly that many examples; a random subset
    keeps ⌈backpropagated / epochs⌉ examples and trains them for that many examples in all
    (the last epoch cut short), so both backpropagate what the source did.
    """
    train = {**spec.train, "examples": max(1, int(backpropagated))}
    data = spec.data
    if data.kind == RANDOM:
        kept = min(spec.dataset_size, max(1, math.ceil(backpropagated / spec.train["epochs"])))
        keep = 1.0 if kept == spec.dataset_size else (kept + 0.5) / spec.dataset_size
        data = replace(data, keep=keep)  # ⌊keep·N⌋ = kept
    return replace(spec, data=data, train=train)


@dataclass(frozen=True)
class Arm:
    """One combination a setting runs with every seed: data arm, weight arm, training overrides.

    ``policy`` is the static data policy whose score table the arm needs (else None);
    ``compute`` and ``random`` are the policy labels of the arms it is judged against.
    """

    data: DataArm
    weights: WeightArm
    train: str = "{}"  # JSON of TrainConfig overrides (retrieval: the negatives settings)
    policy: PolicyConfig | None = None
    task: str = CLASSIFICATION
    compute: str | None = None
    random: str | None = None

    @property
    def identity(self) -> tuple[str, str, str]:
        return arm_identity(self.data), arm_identity(self.weights), self.train

    @property
    def label(self) -> str:
        return arm_label(self.data, self.weights)


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
        arm = Arm(data, dense, canonical(settings), task=RETRIEVAL,
                  random=None if baseline else RANDOM_LABEL)
        key = (name, arm.train)
        if key not in unique[setting]:
            unique[setting][key] = arm
            out[setting][2].append(arm)
    return out


def lm_arms(config: StudyConfig) -> dict[str, tuple[dict, dict, list[Arm]]]:
    """Setting label -> (corpus, model, arms) of a language-model study, baselines first.

    Every arm trains for the same tokens. Baselines: the full pool (the reference, which is
    also the same compute), the target sample alone, a random document subset at each keep
    (the random baseline of the selections at that keep) and, for Rho-1, a random share of
    each batch's tokens (its random baseline at the same share).
    """
    from prunus.text.study import TOKEN_POLICIES, check_lm_config

    dense = WeightArm(DENSE, DENSE_LABEL, baseline=True)
    policies = [p for p in config.policies if p.kind == "lm"]

    def settings(name: str, options: dict, keep: float) -> dict[str, Any]:
        return check_lm_config(config.lm_of(name, options, keep)).model_dump(mode="json")

    def token_label(options: dict) -> str:
        share = options.get("token_keep", config.lm.get("token_keep", 0.6))
        return f"random tokens, keep {percent(share)}"

    entries: list[tuple[DataArm, dict, str | None]] = [
        (DataArm(FULL, "full pool", method="full", baseline=True), settings("full", {}, 1.0),
         None),
        (DataArm(LM, "target sample", method="target", baseline=True),
         settings("target", {}, 1.0), None),
    ]
    keeps = sorted({k for p in policies for k in config.lm_keeps_of(p) if k < 1})
    for keep in keeps:
        entries.append((DataArm(RANDOM, RANDOM_LABEL, keep=keep, method="random", baseline=True),
                        settings("random", {}, keep), None))
    for policy in policies:
        if policy.lm in TOKEN_POLICIES:
            label = token_label(policy.options)
            entries.append((DataArm(LM, label, method="random-tokens", baseline=True),
                            settings("random-tokens", {"token_keep": settings(
                                policy.lm, policy.options, 1.0)["token_keep"]}, 1.0), None))
            share = settings(policy.lm, policy.options, 1.0)["token_keep"]
            entries.append((DataArm(LM, f"{policy.display}, tokens {percent(share)}",
                                    method=policy.lm, options=canonical(policy.options)),
                            settings(policy.lm, policy.options, 1.0), label))
            continue
        for keep in config.lm_keeps_of(policy):
            random = f"{RANDOM_LABEL}, keep {percent(keep)}" if keep < 1 else None
            entries.append((DataArm(LM, f"{policy.display}, keep {percent(keep)}", keep=keep,
                                    method=policy.lm, options=canonical(policy.options)),
                            settings(policy.lm, policy.options, keep), random))
    out: dict[str, tuple[dict, dict, list[Arm]]] = {}
    seen: set[tuple[str, str]] = set()
    for data, values, random in entries:
        target = values["target"] if isinstance(values["target"], str) \
            else ",".join(values["target"])
        setting = f"{values['corpus']} → {target} / {values['model']}"
        if setting not in out:
            out[setting] = ({"name": values["corpus"], "options": values["corpus_options"]},
                            {"name": values["model"], "options": values["model_options"]}, [])
        label = arm_label(data, dense)
        if (setting, label) in seen:  # one random-tokens baseline per share
            continue
        seen.add((setting, label))
        out[setting][2].append(Arm(data, dense, canonical(values), task=LANGUAGE, random=random))
    return out


def oneshot_arms(config: StudyConfig) -> dict[str, tuple[dict, dict, list[Arm]]]:
    """Setting label -> (corpus, model, arms) of a one-shot study: prunings × recoveries.

    For every oneshot policy, sparsity (or N:M pattern) and recovery-data policy (``none``,
    ``random`` and those of ``oneshot.recoveries``) one arm. Baselines on both axes: the dense
    model (the reference) and the dense model given the random recovery (the same fine-tune
    without pruning: how much of a recovery is just more training), **random pruning** at the same layer sparsities and pattern with the
    same recovery (every arm's ``random`` rival), and on the data axis each recovery is judged
    against the same pruning recovered on **random data of the same size** for the same tokens
    (``random`` recovery against **no recovery**) — its ``compute`` rival, named in the report.
    """
    from prunus.weights.nm import pattern_sparsity
    from prunus.weights.study import check_oneshot_config

    def settings(method: str, options: dict, sparsity: float | None, recovery: str) -> dict:
        values = config.oneshot_of(method, options, sparsity, recovery)
        return check_oneshot_config(values).model_dump(mode="json")

    def name(head: str, values: dict, recovery: str) -> str:
        amount = (f"sparsity {percent(values['sparsity'])}" if values["pattern"] ==
                  "unstructured" else values["pattern"])
        tail = "" if recovery == "none" else f" + {display_name(recovery)} recovery"
        return f"{head}, {amount}{tail}"

    recoveries = config.oneshot_recoveries
    dense_values = settings("dense", {}, None, "none")
    entries: list[tuple[DataArm, WeightArm, dict, str | None, str | None]] = [
        (DataArm(FULL, DENSE_LABEL, method="dense", baseline=True),
         WeightArm(DENSE, DENSE_LABEL, baseline=True), dense_values, None, None),
        (DataArm(ONESHOT, f"{DENSE_LABEL} + random recovery", method="random", baseline=True),
         WeightArm(DENSE, DENSE_LABEL, baseline=True), settings("dense", {}, None, "random"),
         None, None)]
    seen: dict[str, str] = {}  # label -> settings, so that a label names one arm only
    for policy in (p for p in config.policies if p.kind == "oneshot"):
        for sparsity in config.oneshot_sparsities_of(policy):
            for recovery in recoveries:
                values = settings(policy.oneshot, policy.options, sparsity, recovery)
                random_values = settings("random", policy.options, sparsity, recovery)
                owl = " (OWL)" if values["layer_sparsity"] == "owl" else ""
                random_label = name(f"{RANDOM_PRUNING_LABEL}{owl}", random_values, recovery)
                if seen.get(random_label, canonical(random_values)) != canonical(random_values):
                    random_label = name(f"{RANDOM_PRUNING_LABEL}{owl} [{policy.display}]",
                                        random_values, recovery)
                rival = {"none": None, "random": "none"}.get(recovery, "random")
                compute = None if rival is None else name(policy.display, values, rival)
                shown = values["sparsity"] if values["pattern"] == "unstructured" else \
                    pattern_sparsity(values["pattern"], None)
                baseline_data = recovery in ("none", "random")
                if random_label not in seen:
                    seen[random_label] = canonical(random_values)
                    entries.append((
                        DataArm(ONESHOT, random_label, method=recovery, baseline=baseline_data),
                        WeightArm(WEIGHTS, RANDOM_PRUNING_LABEL, sparsity=shown, method="random",
                                  options=canonical(policy.options), baseline=True),
                        random_values, None, None))
                entries.append((
                    DataArm(ONESHOT, name(policy.display, values, recovery), method=recovery,
                            baseline=baseline_data),
                    WeightArm(WEIGHTS, policy.display, sparsity=shown, method=policy.oneshot,
                              options=canonical(policy.options)),
                    values, random_label, compute))
    setting = f"stdlib / {dense_values['model']}"
    arms = [Arm(data, weights, canonical(values), task=ONESHOT, random=random, compute=compute)
            for data, weights, values, random, compute in entries]
    return {setting: ({"name": "stdlib", "options": dense_values["corpus_options"]},
                      {"name": dense_values["model"], "options": dense_values["model_options"]},
                      arms)}


def study_arms(config: StudyConfig) -> list[Arm]:
    """The arms of one setting, baselines first, duplicates of a baseline dropped, each
    naming its same-compute and random rivals (see the module docstring)."""
    keeps = sorted({k for p in config.policies if p.kind in ("static", "online")
                    for k in config.keeps_of(p)} | set(config.keep))
    sparsities = sorted({s for p in config.policies if p.kind == "weights"
                         for s in config.sparsities_of(p)} | set(config.sparsity))
    online = plugins.online_methods() or ()
    weight_methods = plugins.weight_methods() or ()
    full = DataArm(FULL, FULL_LABEL, baseline=True)
    dense = WeightArm(DENSE, DENSE_LABEL, baseline=True)

    def arm(data: DataArm, dp: PolicyConfig | None, weights: WeightArm,
            wp: PolicyConfig | None, compute: str | None = None,
            random: str | None = None) -> Arm:
        train = {**(dp.train if dp else {}), **(wp.train if wp else {})}
        static = dp if dp is not None and dp.kind == "static" else None
        if static is not None and static.select == "random":
            static = None  # a random subset needs no scores
        return Arm(data, weights, canonical(train), static, compute=compute, random=random)

    def short(keep: float) -> DataArm | None:
        if keep >= 1:
            return None  # the same compute as full data is full data
        return DataArm(SHORT, f"{FULL_LABEL}, compute of keep {percent(keep)}", keep,
                       baseline=True)

    def random_subset(keep: float) -> DataArm:
        return DataArm(RANDOM, RANDOM_LABEL, keep, select="random",
                       stratify=config.random_stratify, baseline=True)

    # data arms: (arm, its policy, its same-compute rival, its random rival)
    data_arms: list[tuple[DataArm, PolicyConfig | None, DataArm | None, DataArm | None]] = []
    for keep in keeps:
        data_arms.append((random_subset(keep), None, short(keep), None))
        if "rs2" in online:
            data_arms.append((DataArm(ONLINE, display_name("rs2"), keep, method="rs2",
                                      baseline=True), None, short(keep), random_subset(keep)))
    matched: list[tuple[DataArm, PolicyConfig | None, None, None]] = []
    for policy in config.policies:
        if policy.label_arm:
            data = DataArm(LABELS, policy.display, method=policy.score, select=policy.select)
            rand = None
            if policy.select == "remove_issues":
                rand = DataArm(LABELS, f"{RANDOM_LABEL}, as many removed as {policy.display}",
                               method=policy.score, select="random",
                               stratify=config.random_stratify, baseline=True)
                matched.append((rand, policy, None, None))  # it needs the table's count
            data_arms.append((data, policy, None, rand))
            continue
        for keep in config.keeps_of(policy) if policy.kind in ("static", "online") else ():
            if policy.kind == "static":
                data = DataArm(STATIC, policy.display, keep, method=policy.method,
                               select=policy.select, stratify=policy.stratify,
                               select_options=canonical(policy.select_options))
                data_arms.append((data, policy, short(keep), random_subset(keep)))
                continue
            data = DataArm(ONLINE, policy.display, keep, method=policy.online,
                           options=canonical(policy.options))
            if policy.online == "rs2":
                data_arms.append((data, policy, short(keep), random_subset(keep)))
                continue
            source = arm_label(data, dense)
            compute = DataArm(SHORT, f"{FULL_LABEL}, compute of {source}", keep,
                              matches=source, baseline=True)
            rand = DataArm(RANDOM, f"{RANDOM_LABEL}, backprops of {source}", keep,
                           select="random", stratify=config.random_stratify, matches=source,
                           baseline=True)
            data_arms.append((data, policy, compute, rand))
            matched += [(compute, None, None, None), (rand, None, None, None)]

    # weight arms: (arm, its policy, its random rival)
    weight_arms: list[tuple[WeightArm, PolicyConfig | None, WeightArm | None]] = []
    if "random" in weight_methods:
        for sparsity in sparsities:
            weight_arms.append((random_pruning(sparsity, "uniform", 0.0), None, None))
    for policy in config.policies:
        for sparsity in config.sparsities_of(policy) if policy.kind == "weights" else ():
            rival = None
            if "random" in weight_methods:
                rival = random_pruning(sparsity, "erk", pruning_point(policy, sparsity))
                weight_arms.append((rival, None, None))
            weight_arms.append((WeightArm(WEIGHTS, policy.display, sparsity,
                                          method=policy.weights,
                                          options=canonical(policy.options)), policy, rival))

    label = arm_label
    arms = [arm(full, None, dense, None)]
    shorts = {d for _, _, d, _ in data_arms if d is not None and d.matches is None}
    arms += [arm(d, None, dense, None) for d in sorted(shorts, key=lambda d: d.keep)]
    for d, dp, compute, rand in data_arms:
        arms.append(arm(d, dp, dense, None, compute and label(compute, dense),
                        rand and label(rand, dense)))
    arms += [arm(d, dp, dense, None) for d, dp, *_ in matched]
    for w, wp, rival in weight_arms:
        arms.append(arm(full, None, w, wp, None, rival and label(full, rival)))
    if config.cross:
        for d, dp, compute, rand in data_arms:
            for w, wp, rival in weight_arms:
                random_data = rand or d
                random_weights = rival or (w if w.baseline else None)
                arms.append(arm(d, dp, w, wp, compute and label(compute, dense),
                                random_weights and label(random_data, random_weights)))
    unique: dict[tuple[str, str, str], Arm] = {}
    for a in arms:
        unique.setdefault(a.identity, a)
    return list(unique.values())


def random_pruning(sparsity: float, allocation: str, at: float) -> WeightArm:
    """The random pruning baseline with ``allocation`` layer densities, pruned at ``at``."""
    when = "at init" if at == 0 else f"at {percent(at)} of training"
    name = "ERK" if allocation == "erk" else allocation
    options = {"allocation": allocation} if at == 0 else {"allocation": allocation, "at": at}
    return WeightArm(WEIGHTS, f"{RANDOM_PRUNING_LABEL} ({name}, {when})", sparsity,
                     method="random", options=canonical(options), baseline=True)


def pruning_point(policy: PolicyConfig, sparsity: float) -> float:
    """When a one-shot weight method prunes (fraction of training); 0 for every other schedule
    (gradual and dynamic-sparse methods are compared with random pruning at init)."""
    try:
        sparsifier = plugins.sparsifier(policy.weights, sparsity, 0, **policy.options)
    except Exception:  # noqa: BLE001 - the config validator reports bad settings
        return 0.0
    return float(getattr(sparsifier, "at", 0.0) or 0.0)


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
    """The score table a static policy needs, with every proxy default resolved; for a
    precomputed table (``scores = FILE``), the file, keyed by its content."""
    from prunus.data.scoring import default_proxy_epochs

    if policy.scores is not None:
        with open(policy.scores, "rb") as handle:
            content = hashlib.file_digest(handle, "blake2b").hexdigest()
        values = {"dataset": dataset, "fingerprint": fingerprint, "method": "", "model": "",
                  "model_options": {}, "epochs": 0, "full_epochs": 0, "seeds": [],
                  "train": {}, "options": {}, "table": policy.scores}
        return ScoreJob(key=f"table-{digest({**values, 'content': content}, 10)}", **values)
    proxy = policy.proxy
    epochs = default_proxy_epochs(policy.score, proxy.epochs, config.train.epochs)
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
    Negatives and language-model arms are named by their own label (which says its share)."""
    if data.kind in (NEGATIVES, LM, ONESHOT) or (data.method is not None and data.keep == 1.0
                                  and data.kind in (FULL, RANDOM)):
        return data.label
    if data.kind in (SHORT, LABELS) or data.matches is not None:
        return data.label if weights.kind == DENSE else (
            f"{data.label} + {weights.label}, sparsity {percent(weights.sparsity)}")
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
