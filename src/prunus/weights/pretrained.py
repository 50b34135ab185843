"""One-shot pruning of a pretrained transformer from a little calibration data, no retraining.

:func:`oneshot` prunes **sequentially, block by block** (the procedure of Wanda, SparseGPT and
llm-compressor): it finds the model's repeated blocks (GPT-2 ``transformer.h``, Llama
``model.layers``, BERT ``encoder.layer``, or a list you give), captures the first block's
inputs on the calibration batches (hidden states plus every other argument the model passes:
attention masks, position ids, rotary position embeddings), then for each block

1. runs the block with a forward hook on every ``nn.Linear`` (and GPT-2's ``Conv1D``, whose
   weight is stored transposed) that accumulates ``S = Σ x xᵀ`` (SparseGPT) or its diagonal
   ``‖X_j‖²`` (the others) over every real calibration token (padding excluded),
2. prunes every such layer from its statistics (all layers of a block see the dense block's
   inputs),
3. re-runs the pruned block to produce the next block's inputs, measuring each layer's
   reconstruction error ``‖WX − ŴX‖_F / ‖WX‖_F`` on the inputs it receives there (for the
   block's first layers, exactly the calibration inputs it was pruned on).

So the memory held is one block's activations on the calibration set, not the model's, and
block ``l`` is calibrated on the outputs of the already pruned blocks ``< l``.

Methods (``W`` is a layer's ``(out, in)`` matrix, ``X`` its ``(in, tokens)`` inputs):

* ``wanda`` (Sun et al. 2023): score ``|W_ij|·‖X_j‖₂``, compared within each output row.
* ``sparsegpt`` (Frantar & Alistarh 2023): layer-wise OBS with the Hessian ``H = 2XXᵀ/n``
  (:func:`sparsegpt_prune`); the surviving weights are updated to compensate and written into
  the model's weights.
* ``magnitude``: ``|W_ij|`` per output row (``scope="row"``), per matrix (``"layer"``) or with
  one threshold across every pruned matrix (``"global"``).
* ``random``: uniform random scores, per output row: the baseline.

Patterns: ``"unstructured"`` or ``"N:M"`` (keep ``N`` of every ``M`` consecutive input
columns of each row). Layer sparsities: ``"uniform"`` or ``"owl"`` (Yin et al. 2024,
:func:`owl_sparsities`). Masks are prunus's own parametrizations (:mod:`prunus.weights.masks`):
``sparsity_report``, ``save``, ``load`` and ``remove`` work on the result. Every pruned matrix
loses exactly ``⌊s·n⌋`` weights (per-row methods spread that count over the rows, no row more
than one off ``s·in``); every N:M group keeps exactly ``N``.
"""

from __future__ import annotations

import fnmatch
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import torch
from torch import nn

from prunus.counts import fraction_count
from prunus.errors import PrunusError, choice_error

METHODS = ("wanda", "sparsegpt", "magnitude", "random")
LAYER_SPARSITIES = ("uniform", "owl")
SCOPES = ("row", "layer", "global")
# Where the repeated blocks of common architectures live, matched as a suffix of a module name
# (a sentence-transformers model nests BERT under "0.auto_model").
BLOCK_PATHS = ("transformer.h", "model.layers", "encoder.layer", "model.decoder.layers",
               "gpt_neox.layers", "encoder.layers", "decoder.layers", "layers", "blocks", "h")


@dataclass
class LayerResult:
    """One pruned matrix: its weight name, block index, shape, achieved sparsity, relative
    reconstruction error ``‖WX − ŴX‖_F / ‖WX‖_F`` on the calibration inputs ``X`` it receives
    when the pruned block is re-run, and the seconds spent choosing its mask (and, for
    SparseGPT, its new weights)."""

    name: str
    block: int
    shape: tuple[int, ...]
    sparsity: float
    error: float
    seconds: float


@dataclass
class OneShotResult:
    """What :func:`oneshot` did: settings, the per-layer table, and what it left dense."""

    method: str
    pattern: str
    sparsity: float
    layer_sparsity: str
    blocks: list[str]
    block_sparsities: list[float]
    layers: list[LayerResult] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    outlier_ratios: list[float] | None = None
    samples: int = 0
    tokens: int = 0
    seconds: float = 0.0

    @property
    def achieved_sparsity(self) -> float:
        """Share of the pruned matrices' weights that are masked out."""
        total = sum(math.prod(r.shape) for r in self.layers)
        pruned = sum(r.sparsity * math.prod(r.shape) for r in self.layers)
        return pruned / total if total else 0.0

    def table(self) -> list[dict[str, Any]]:
        """The per-layer rows as plain dicts (name, block, shape, sparsity, error, seconds)."""
        return [dict(vars(r)) for r in self.layers]

    def summary(self) -> dict[str, Any]:
        """Everything as JSON-ready values."""
        return {
            "method": self.method, "pattern": self.pattern, "sparsity": self.sparsity,
            "layer_sparsity": self.layer_sparsity, "achieved_sparsity": self.achieved_sparsity,
            "blocks": self.blocks, "block_sparsities": self.block_sparsities,
            "outlier_ratios": self.outlier_ratios, "samples": self.samples,
            "tokens": self.tokens, "seconds": self.seconds, "excluded": self.excluded,
            "skipped": self.skipped,
            "layers": [{**row, "shape": list(row["shape"])} for row in self.table()],
        }


ProgressCallback = Callable[[int, int, str], None]


def oneshot(
    model: nn.Module,
    calibration: Any,
    sparsity: float | None = None,
    method: str = "wanda",
    pattern: str = "unstructured",
    layer_sparsity: str = "uniform",
    blocks: Sequence[str] | str | None = None,
    *,
    scope: str = "row",
    exclude: Sequence[str] = (),
    dampening: float = 0.01,
    block_size: int = 128,
    owl_threshold: float = 5.0,
    owl_lambda: float = 0.08,
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> OneShotResult:
    """Prune a pretrained transformer in one shot from calibration data, block by block.

    Wanda (Sun et al. 2023, *A Simple and Effective Pruning Approach for LLMs*), SparseGPT
    (Frantar & Alistarh 2023, *Massive Language Models Can Be Accurately Pruned in One-Shot*),
    magnitude and random, with uniform or OWL (Yin et al. 2024, *Outlier Weighed Layerwise
    Sparsity*) layer sparsities; see the module docstring for the procedure. The model is
    changed in place: masks are attached as :class:`prunus.weights.masks.Mask`
    parametrizations, and SparseGPT's updated weights are written into the weights.

    Args:
        model: a Hugging Face causal LM or encoder, a sentence-transformers model, or any module
            with repeated blocks (``blocks``).
        calibration: batches of token ids — a ``(samples, length)`` tensor, or a list of
            ``(batch, length)`` tensors — or a list of tokenized dict batches (``input_ids``,
            ``attention_mask``, …; BERT/MiniLM). See :mod:`prunus.weights.calibration`.
        sparsity: fraction of each pruned matrix set to zero, in [0, 1). Default 0.5
            unstructured; an N:M pattern fixes it at ``1 − N/M``.
        method: ``"wanda"``, ``"sparsegpt"``, ``"magnitude"`` or ``"random"``. Default
            ``"wanda"``.
        pattern: ``"unstructured"`` or ``"N:M"`` such as ``"2:4"``. A layer whose input size is
            not a multiple of ``M`` stays dense and is listed in ``skipped``.
        layer_sparsity: ``"uniform"`` (every block at ``sparsity``) or ``"owl"``. Default
            ``"uniform"``.
        blocks: names of the repeated blocks (a list of module names, or the name of one
            ``ModuleList``); None finds them (``transformer.h``, ``model.layers``,
            ``encoder.layer``, …).
        scope: where wanda/magnitude/random compare scores: ``"row"`` (each output row, the
            Wanda paper's choice), ``"layer"`` (the whole matrix) or ``"global"`` (magnitude
            only: one threshold across every pruned matrix, exact in total). Default ``"row"``.
            SparseGPT chooses its own masks (per block of columns).
        exclude: ``fnmatch`` patterns of module names inside the blocks to leave dense.
            Outside the blocks nothing is pruned (embeddings, ``lm_head``, poolers); those
            layers are listed in ``excluded``.
        dampening: SparseGPT's λ: ``H += λ·mean(diag H)·I``. Default 0.01.
        block_size: SparseGPT's column block ``B`` (mask choice and lazy updates). Default 128.
        owl_threshold: OWL's ``M``: a score is an outlier above ``M ×`` the block's mean.
            Default 5.
        owl_lambda: OWL's λ: block sparsities span ``s ± λ`` around their exact mean ``s``.
            Default 0.08.
        seed: seed of the random method. Default 0.
        progress: called as ``progress(done, total, description)`` after each block (and each
            block of OWL's dense pass).

    Returns:
        An :class:`OneShotResult` with the per-layer table.

    Raises:
        PrunusError: sparsity outside [0, 1), a bad pattern (N ≥ M), an unknown method, layer
            sparsity or scope, a model without recognisable blocks and no ``blocks``, empty
            calibration data, OWL sparsities leaving [0, 1).
    """
    settings = check_settings(method, sparsity, pattern, layer_sparsity, scope, dampening,
                              block_size, owl_threshold, owl_lambda)
    sparsity, nm = settings
    batches = calibration_batches(model, calibration)
    block_names, block_modules = find_blocks(model, blocks)
    layers = [block_layers(name, module, exclude) for name, module in zip(block_names, block_modules)]
    if not any(layers):
        raise PrunusError("the blocks have no linear layer to prune (check blocks= and exclude=).")
    started = time.perf_counter()
    ratios = None
    total_steps = len(block_modules) * (2 if layer_sparsity == "owl" else 1)
    done = [0]

    def step(description: str) -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0], total_steps, description)

    with _inference(model):
        if layer_sparsity == "owl":
            ratios = owl_outlier_ratios(model, batches, block_modules, layers, owl_threshold, step)
            sparsities = owl_sparsities(ratios, sparsity, owl_lambda)
        else:
            sparsities = [sparsity] * len(block_modules)
        fixed = None
        if method == "magnitude" and scope == "global":
            fixed = global_magnitude_masks([lay for group in layers for lay in group], sparsity)
        result = OneShotResult(method, pattern, sparsity, layer_sparsity, block_names, sparsities,
                               outlier_ratios=ratios)
        generator = torch.Generator().manual_seed(seed)
        states = capture_inputs(model, block_modules[0], batches)
        result.samples = sum(s.hidden.shape[0] for s in states)
        result.tokens = sum(s.tokens for s in states)
        full = method == "sparsegpt"  # the others read only the diagonal ‖X_j‖²
        for index, (block, group) in enumerate(zip(block_modules, layers)):
            stats = layer_statistics(block, group, states, full=full)
            dense, rows = {}, []
            for layer in group:
                weight = layer.matrix()
                row = prune_layer(layer, stats[layer.name], sparsities[index], method, nm, scope,
                                  dampening, block_size, generator, fixed, index)
                if row is None:
                    result.skipped.append(layer.weight_name)
                else:
                    dense[layer.name] = weight
                    rows.append(row)
            del stats
            errors = {}
            states = propagate(block, states, group, dense, errors)
            for row in rows:
                row.error = errors[row.name.removesuffix(".weight")]
            result.layers.extend(rows)
            step(f"pruned {block_names[index]}")
    if result.skipped:
        warnings.warn(f"{len(result.skipped)} layers stay dense: their input size is not a "
                      f"multiple of M={nm[1]} ({result.skipped[0]}, ...).", stacklevel=2)
    pruned = {lay.name for group in layers for lay in group}
    result.excluded = excluded_layers(model, pruned)
    result.seconds = time.perf_counter() - started
    return result


# --------------------------------------------------------------------------- validation


def check_settings(method: str, sparsity: float | None, pattern: str, layer_sparsity: str,
                   scope: str, dampening: float, block_size: int, owl_threshold: float,
                   owl_lambda: float) -> tuple[float, tuple[int, int] | None]:
    """Validate every knob once, at the edge; returns ``(sparsity, (N, M) or None)``."""
    from prunus.weights.nm import parse_pattern, pattern_sparsity

    if method not in METHODS:
        raise choice_error("method", method, METHODS)
    if layer_sparsity not in LAYER_SPARSITIES:
        raise choice_error("layer_sparsity", layer_sparsity, LAYER_SPARSITIES)
    if scope not in SCOPES:
        raise choice_error("scope", scope, SCOPES)
    nm = parse_pattern(pattern)
    value = pattern_sparsity(pattern, sparsity, default=0.5)
    if scope == "global" and method != "magnitude":
        raise PrunusError(f"scope 'global' applies to method 'magnitude' only (got {method!r}).")
    if scope != "row" and method == "sparsegpt":
        raise PrunusError("scope applies to wanda, magnitude and random; sparsegpt chooses its "
                          f"masks per block of columns (got scope {scope!r}).")
    if nm is not None and (layer_sparsity == "owl" or scope != "row"):
        raise PrunusError(f"pattern {pattern!r} fixes every group's sparsity; use it with "
                          "layer_sparsity 'uniform' and scope 'row'.")
    if layer_sparsity == "owl" and scope == "global":
        raise PrunusError("layer_sparsity 'owl' sets per-block sparsities; it cannot be combined "
                          "with scope 'global'.")
    if not (isinstance(dampening, int | float) and 0 <= dampening < math.inf):
        raise PrunusError(f"dampening must be a non-negative number (got {dampening!r}).")
    if not isinstance(block_size, int) or block_size < 1:
        raise PrunusError(f"block_size must be a positive integer (got {block_size!r}).")
    if not owl_threshold > 0:
        raise PrunusError(f"owl_threshold must be positive (got {owl_threshold!r}).")
    if not 0 <= owl_lambda < 1:
        raise PrunusError(f"owl_lambda must be in [0, 1) (got {owl_lambda!r}).")
    return value, nm


# --------------------------------------------------------------------------- model structure


@dataclass
class Layer:
    """A prunable matrix inside a block: ``name`` is the module's full name. ``transposed`` is
    True for GPT-2's ``Conv1D`` (weight stored ``(in, out)``)."""

    name: str
    module: nn.Module
    transposed: bool

    @property
    def weight_name(self) -> str:
        return f"{self.name}.weight"

    def matrix(self) -> torch.Tensor:
        """The effective weight as a float32 ``(out, in)`` copy."""
        weight = self.module.weight.detach()
        return (weight.t() if self.transposed else weight).float().clone()

    def to_layout(self, matrix: torch.Tensor) -> torch.Tensor:
        """An ``(out, in)`` tensor in the weight's own layout."""
        return (matrix.t() if self.transposed else matrix).contiguous()


def is_conv1d(module: nn.Module) -> bool:
    """transformers' GPT-2 ``Conv1D`` (a linear layer with the weight stored transposed),
    recognised without importing transformers (a parametrized copy subclasses it)."""
    named = any(cls.__name__ == "Conv1D" for cls in type(module).__mro__)
    return named and hasattr(module, "nf") and module.weight.dim() == 2


def find_blocks(model: nn.Module, blocks: Sequence[str] | str | None = None
                ) -> tuple[list[str], list[nn.Module]]:
    """The repeated blocks: the names given, or the first ``ModuleList`` whose name ends with
    one of :data:`BLOCK_PATHS` and whose members hold linear layers.

    Raises:
        PrunusError: names that are not modules of the model, or nothing recognisable.
    """
    modules = dict(model.named_modules())
    if isinstance(blocks, str):
        blocks = [blocks]
    if blocks is not None:
        names = list(blocks)
        unknown = [n for n in names if n not in modules]
        if unknown or not names:
            raise PrunusError(f"blocks must name modules of the model (got {unknown[:1] or names!r}).")
        if len(names) == 1 and isinstance(modules[names[0]], nn.ModuleList):
            names = [f"{names[0]}.{i}" for i in range(len(modules[names[0]]))]
        return names, [modules[n] for n in names]
    for suffix in BLOCK_PATHS:
        for name, module in modules.items():
            if not isinstance(module, nn.ModuleList) or len(module) == 0:
                continue
            if name != suffix and not name.endswith(f".{suffix}"):
                continue
            if all(_has_linear(child) for child in module):
                return [f"{name}.{i}" for i in range(len(module))], list(module)
    raise PrunusError(
        "blocks: the model has no recognisable repeated blocks (one of "
        f"{', '.join(BLOCK_PATHS[:3])}, ...); pass blocks= the list of block module names."
    )


def _has_linear(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Linear) or is_conv1d(m) for m in module.modules())


def block_layers(block_name: str, block: nn.Module, exclude: Sequence[str] = ()) -> list[Layer]:
    """Every ``nn.Linear`` and ``Conv1D`` of a block, in module order, minus ``exclude``."""
    out = []
    for name, module in block.named_modules():
        full = f"{block_name}.{name}" if name else block_name
        if any(fnmatch.fnmatchcase(full, p) or fnmatch.fnmatchcase(name, p) for p in exclude):
            continue
        if isinstance(module, nn.Linear):
            out.append(Layer(full, module, transposed=False))
        elif is_conv1d(module):
            out.append(Layer(full, module, transposed=True))
    return out


def excluded_layers(model: nn.Module, pruned: set[str]) -> list[str]:
    """Linear, Conv1D and embedding weights that were left dense (``lm_head``, embeddings, …)."""
    out = []
    for name, module in model.named_modules():
        if name in pruned:
            continue
        if isinstance(module, nn.Linear | nn.Embedding) or is_conv1d(module):
            out.append(f"{name}.weight")
    return out


# --------------------------------------------------------------------------- calibration flow


class _Stop(Exception):
    """Raised by the capture hook to end the model's forward at the first block."""


@dataclass
class BlockInput:
    """One calibration batch at a block's door: the hidden states, the other positional and
    keyword arguments the model passed, and which positions are real tokens."""

    hidden: torch.Tensor
    args: tuple
    kwargs: dict
    by_keyword: bool
    token_mask: torch.Tensor | None

    @property
    def tokens(self) -> int:
        if self.token_mask is None:
            return int(self.hidden.shape[0] * self.hidden.shape[1]) if self.hidden.dim() > 2 else int(self.hidden.shape[0])
        return int(self.token_mask.sum())

    def call(self, block: nn.Module) -> torch.Tensor:
        """Run ``block`` on this batch; returns its output hidden states."""
        if self.by_keyword:
            out = block(*self.args, hidden_states=self.hidden, **self.kwargs)
        else:
            out = block(self.hidden, *self.args, **self.kwargs)
        return out[0] if isinstance(out, tuple | list) else out


class _inference:
    """``eval()``, ``no_grad`` and ``config.use_cache = False`` for the duration."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> None:
        self.training = self.model.training
        self.grad = torch.is_grad_enabled()
        config = getattr(self.model, "config", None)
        self.cache = getattr(config, "use_cache", None)
        if self.cache is not None:
            config.use_cache = False
        self.model.eval()
        torch.set_grad_enabled(False)

    def __exit__(self, *exc: object) -> None:
        torch.set_grad_enabled(self.grad)
        self.model.train(self.training)
        if self.cache is not None:
            self.model.config.use_cache = self.cache


def calibration_batches(model: nn.Module, calibration: Any) -> list[Any]:
    """Normalise calibration data to a list of batches on the model's device: ``(B, T)``
    LongTensors or dicts of tensors.

    Raises:
        PrunusError: empty calibration data, or batches that are neither.
    """
    device = next(model.parameters()).device
    if torch.is_tensor(calibration) or isinstance(calibration, Mapping):
        calibration = [calibration]
    batches = []
    for batch in calibration:
        if torch.is_tensor(batch):
            batch = batch.unsqueeze(0) if batch.dim() == 1 else batch
            if batch.dim() != 2 or batch.numel() == 0:
                raise PrunusError("calibration token-id batches must be (batch, length) tensors.")
            batches.append(batch.to(device))
        elif isinstance(batch, Mapping) and torch.is_tensor(batch.get("input_ids", batch.get("inputs_embeds"))):
            batches.append({k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()})
        else:
            raise PrunusError("calibration must be token-id tensors (batch, length) or tokenized "
                              f"dict batches with input_ids (got {type(batch).__name__}).")
    if not batches:
        raise PrunusError("calibration must hold at least one batch (got none).")
    return batches


def run_model(model: nn.Module, batch: Any) -> Any:
    """One forward of the whole model on a calibration batch (a sentence-transformers model
    takes its features dict whole; a Hugging Face model takes it as keywords)."""
    if isinstance(batch, Mapping):
        if isinstance(model, nn.Sequential):
            return model(dict(batch))
        return model(**batch)
    return model(batch)


def capture_inputs(model: nn.Module, first: nn.Module, batches: list[Any]) -> list[BlockInput]:
    """The first block's inputs on every calibration batch: a forward pre-hook records the
    arguments and stops the forward there."""
    captured: list[BlockInput] = []
    current: dict[str, Any] = {}

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        kwargs = dict(kwargs)
        for key in ("past_key_values", "past_key_value", "layer_past", "cache"):
            if key in kwargs:
                kwargs[key] = None
        if "use_cache" in kwargs:
            kwargs["use_cache"] = False
        by_keyword = not args
        hidden = kwargs.pop("hidden_states") if by_keyword else args[0]
        rest = args if by_keyword else tuple(None if _is_cache(a) else a for a in args[1:])
        captured.append(BlockInput(hidden, rest, kwargs, by_keyword, current.get("mask")))
        raise _Stop

    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for batch in batches:
            mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
            current["mask"] = mask.bool() if torch.is_tensor(mask) else None
            try:
                run_model(model, batch)
            except _Stop:
                continue
            raise PrunusError("blocks: the first block was never called by the model's forward; "
                              "pass blocks= the modules the forward runs through.")
    finally:
        handle.remove()
    return captured


def _is_cache(value: Any) -> bool:
    return type(value).__name__.endswith("Cache")


def layer_statistics(block: nn.Module, layers: list[Layer], states: list[BlockInput],
                     full: bool = True) -> dict[str, tuple[torch.Tensor, int]]:
    """Input statistics of every layer over all calibration batches, from one forward of the
    block per batch (padding excluded): ``(S, n)`` with ``S = Σ x xᵀ`` (``full``, float32) or
    its diagonal ``Σ x²`` per input feature, and ``n`` the token count."""
    stats: dict[str, list] = {}
    current: dict[str, torch.Tensor | None] = {}

    def accumulate(name: str, x: torch.Tensor) -> None:
        size = (x.shape[1],) * (2 if full else 1)
        entry = stats.setdefault(name, [torch.zeros(size, device=x.device), 0])
        if full:
            entry[0].addmm_(x.t(), x)
        else:
            entry[0] += (x * x).sum(0)
        entry[1] += x.shape[0]

    _run_hooked(block, layers, states, current, lambda layer, x, y: accumulate(layer.name, x))
    missing = [lay.name for lay in layers if lay.name not in stats]
    if missing:
        raise PrunusError(f"layer {missing[0]!r} was never called by its block's forward; "
                          "exclude it (exclude=) or pass other blocks.")
    return {name: (value, n) for name, (value, n) in stats.items()}


def _run_hooked(block: nn.Module, layers: list[Layer], states: list[BlockInput], current: dict,
                use: Callable[[Layer, torch.Tensor, torch.Tensor], None]) -> list[torch.Tensor]:
    """Run the block on every batch with ``use(layer, x, y)`` called on each layer's real-token
    inputs ``x`` (tokens, in) and outputs ``y`` (tokens, out) in float32; returns the block's
    outputs."""
    handles = []

    def make_hook(layer: Layer):
        def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
            x, y = inputs[0], output
            mask = current.get("mask")
            if mask is not None and x.dim() >= 3 and tuple(x.shape[:2]) == tuple(mask.shape):
                x, y = x[mask], y[mask]
            use(layer, x.reshape(-1, x.shape[-1]).float(), y.reshape(-1, y.shape[-1]).float())
        return hook

    for layer in layers:
        handles.append(layer.module.register_forward_hook(make_hook(layer)))
    outputs = []
    try:
        for state in states:
            current["mask"] = state.token_mask
            outputs.append(state.call(block))
    finally:
        for handle in handles:
            handle.remove()
    return outputs


def propagate(block: nn.Module, states: list[BlockInput], layers: Sequence[Layer] = (),
              dense: Mapping[str, torch.Tensor] | None = None,
              errors: dict[str, float] | None = None) -> list[BlockInput]:
    """The next block's inputs: this (pruned) block's outputs, with the same other arguments.

    With ``dense`` weights (``(out, in)`` by layer name), also fills ``errors`` with each
    layer's relative reconstruction error ``‖WX − ŴX‖_F / ‖WX‖_F`` over the inputs ``X`` it
    receives in this pass (the block's first layers see exactly their calibration inputs), at
    the cheaper of two exact costs per token: a layer with fewer inputs than outputs
    accumulates ``S = XXᵀ`` and takes :func:`reconstruction_error` from it once at the end
    (``in²`` per token); any other computes ``WX`` and ``WX − ŴX`` directly (``in·out``).
    The pruned weights are computed once per layer for the pass, not once per batch."""
    from torch.nn.utils import parametrize

    sums: dict[str, list[Any]] = {}
    current: dict[str, Any] = {}
    measured = [lay for lay in layers if dense is not None and lay.name in dense]
    biases = {lay.name: _bias(lay.module) for lay in measured}

    def measure(layer: Layer, x: torch.Tensor, y: torch.Tensor) -> None:
        weight = dense[layer.name]
        if weight.shape[1] < weight.shape[0]:
            entry = sums.setdefault(layer.name, [torch.zeros(x.shape[1], x.shape[1], device=x.device)])
            entry[0].addmm_(x.t(), x)
            return
        # the pruned layer's own output y = ŴX + b spares a second product: WX − ŴX = (WX + b) − y
        full = x @ weight.t()
        delta = full - (y if biases[layer.name] is None else y - biases[layer.name])
        entry = sums.setdefault(layer.name, [0.0, 0.0])
        entry[0] += float(torch.linalg.vector_norm(delta) ** 2)  # float32, cascade-summed
        entry[1] += float(torch.linalg.vector_norm(full) ** 2)

    with parametrize.cached():
        outputs = _run_hooked(block, measured, states, current, measure)
    if errors is not None:
        for layer in measured:
            entry = sums[layer.name]
            if len(entry) == 1:
                errors[layer.name] = reconstruction_error(dense[layer.name], layer.matrix(), entry[0])
            else:
                num, den = entry
                errors[layer.name] = math.sqrt(num / den) if den > 0 else 0.0
    return [BlockInput(hidden, s.args, s.kwargs, s.by_keyword, s.token_mask)
            for hidden, s in zip(outputs, states)]


# --------------------------------------------------------------------------- pruning one layer


def prune_layer(layer: Layer, gram: tuple[torch.Tensor, int], sparsity: float, method: str,
                nm: tuple[int, int] | None, scope: str, dampening: float, block_size: int,
                generator: torch.Generator, fixed: dict[str, torch.Tensor] | None,
                block: int) -> LayerResult | None:
    """Prune one layer in place (mask attached, SparseGPT's weights written); its table row,
    or None when an N:M pattern does not fit its input size."""
    started = time.perf_counter()
    weight = layer.matrix()
    if nm is not None and weight.shape[1] % nm[1]:
        return None
    stat, n = gram
    if fixed is not None:
        keep, new = fixed[layer.name], weight * fixed[layer.name]
    elif method == "sparsegpt":
        new, keep = sparsegpt_prune(weight, 2.0 * stat / max(n, 1), sparsity, nm=nm,
                                    block_size=block_size, dampening=dampening, name=layer.name)
    else:
        if method == "wanda":
            scores = wanda_scores(weight, torch.diagonal(stat) if stat.dim() == 2 else stat)
        elif method == "magnitude":
            scores = weight.abs()
        else:
            scores = torch.rand(weight.shape, generator=generator).to(weight.device)
        keep = select(scores, sparsity, nm, scope)
        new = weight * keep
    with torch.no_grad():
        target = original_weight(layer.module)
        target.copy_(layer.to_layout(new).to(target.dtype))
    _attach(layer, layer.to_layout(keep))
    seconds = time.perf_counter() - started
    # the error is measured when the pruned block is re-run (see propagate)
    return LayerResult(layer.weight_name, block, tuple(layer.module.weight.shape),
                       float((~keep).sum()) / keep.numel(), math.nan, seconds)


def _bias(module: nn.Module) -> torch.Tensor | None:
    bias = getattr(module, "bias", None)
    return None if bias is None else bias.detach().float()


def original_weight(module: nn.Module) -> torch.Tensor:
    """The stored weight under any parametrization (the unmasked ``original``), else the weight."""
    from torch.nn.utils import parametrize

    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original
    return module.weight


def _attach(layer: Layer, keep: torch.Tensor) -> None:
    """Attach (or replace) the layer's mask as a prunus parametrization."""
    from prunus.weights.masks import apply

    apply(layer.module, {"weight": keep})


def select(scores: torch.Tensor, sparsity: float, nm: tuple[int, int] | None = None,
           scope: str = "row") -> torch.Tensor:
    """Keep mask of an ``(out, in)`` score matrix: prune the lowest scores.

    * N:M: keep the ``N`` highest of every ``M`` consecutive entries of each row.
    * ``"row"``: row ``r`` prunes ``⌊s·(r+1)·in⌋ − ⌊s·r·in⌋`` entries, so the matrix loses
      exactly ``⌊s·out·in⌋`` and no row is more than one off ``s·in``.
    * ``"layer"``: the ``⌊s·out·in⌋`` lowest of the whole matrix.

    Ties: the earlier position is kept (a stable sort).
    """
    from prunus.weights.allocation import keep_top
    from prunus.weights.nm import nm_mask

    if nm is not None:
        return nm_mask(scores, *nm)
    if scope == "layer":
        return keep_top(scores, scores.numel() - fraction_count(sparsity, scores.numel()))
    rows, cols = scores.shape
    pruned = spread(sparsity, [cols] * rows).to(scores.device)
    rank = torch.empty_like(scores, dtype=torch.long)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    rank.scatter_(1, order, torch.arange(cols, device=scores.device).expand(rows, cols).contiguous())
    return rank < (cols - pruned).unsqueeze(1)


def spread(sparsity: float, sizes: Sequence[int]) -> torch.Tensor:
    """Pruned count of each of consecutive groups of ``sizes``: ``⌊s·end⌋ − ⌊s·start⌋`` over
    the cumulative sizes, so the total is exactly ``⌊s·Σ sizes⌋`` (the rounding rule of
    :func:`prunus.counts.fraction_count`, in integer arithmetic on its exact fraction)."""
    exact = Fraction(str(float(sparsity)))
    ends, total = [], 0
    for size in sizes:
        total += size
        ends.append(exact.numerator * total // exact.denominator)
    ends_t = torch.tensor(ends, dtype=torch.long)
    return ends_t - torch.cat([torch.zeros(1, dtype=torch.long), ends_t[:-1]])


def wanda_scores(weight: torch.Tensor, squared_norms: torch.Tensor) -> torch.Tensor:
    """Wanda (Sun et al. 2023): ``S_ij = |W_ij| · ‖X_j‖₂`` with ``‖X_j‖₂² = Σ_tokens x_j²``
    (the diagonal of ``S = Σ x xᵀ``)."""
    return weight.abs() * squared_norms.clamp_min(0).sqrt().to(weight.dtype).unsqueeze(0)


def reconstruction_error(weight: torch.Tensor, new: torch.Tensor, gram: torch.Tensor) -> float:
    """``‖WX − ŴX‖_F / ‖WX‖_F`` from ``S = XXᵀ``: ``sqrt(tr(ΔSΔᵀ) / tr(WSWᵀ))``, Δ = W − Ŵ."""
    delta = (weight - new).double()
    s = gram.double()
    num = float(((delta @ s) * delta).sum())
    den = float(((weight.double() @ s) * weight.double()).sum())
    return math.sqrt(max(num, 0.0) / den) if den > 0 else 0.0


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    *,
    nm: tuple[int, int] | None = None,
    block_size: int = 128,
    dampening: float = 0.01,
    name: str = "layer",
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT (Frantar & Alistarh 2023) on one ``(out, in)`` matrix; returns ``(Ŵ, keep)``.

    ``H = 2XXᵀ/n`` in float32; dead inputs (``H_jj = 0``) get ``H_jj = 1`` and ``W_:,j = 0``;
    ``H += λ·mean(diag H)·I`` (λ = ``dampening``, 0.01); ``U = chol(H⁻¹)`` upper. Columns are
    processed in blocks of ``B`` (``block_size``, 128; rounded down to a multiple of ``M``).
    Unstructured: at each block's start, prune that block's share of ``⌊s·n⌋`` (cumulative
    rounding) with the lowest ``w²/U_jj²``; N:M: at every ``M``-th column, the ``M − N``
    lowest in each row's group. Column ``j``: ``q = w·keep``, ``err = (w − q)/U_jj``,
    ``W_:,j: −= err·U_j,j:`` inside the block, then the lazy update
    ``W_:,later −= Err·U_block,later``. A Cholesky failure retries with 10× the dampening and
    warns.
    """
    from prunus.weights.nm import nm_mask

    w = weight.float().clone()
    h = hessian.float().clone()
    rows, cols = w.shape
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    u = _inverse_cholesky(h, dampening, name)
    if nm is not None:
        block_size = max(nm[1], block_size - block_size % nm[1])
    starts = list(range(0, cols, block_size))
    counts = spread(sparsity, [rows * (min(i + block_size, cols) - i) for i in starts])
    pruned = torch.zeros_like(w, dtype=torch.bool)
    for b, i1 in enumerate(starts):
        i2 = min(i1 + block_size, cols)
        w1 = w[:, i1:i2].clone()
        u1 = u[i1:i2, i1:i2]
        d = torch.diagonal(u1)
        q1 = torch.zeros_like(w1)
        err1 = torch.zeros_like(w1)
        mask1 = torch.zeros_like(w1, dtype=torch.bool)
        if nm is None:
            saliency = w1 ** 2 / d.unsqueeze(0) ** 2
            mask1 = ~_keep_top(saliency, saliency.numel() - int(counts[b]))
        for i in range(i2 - i1):
            if nm is not None and i % nm[1] == 0:
                group = w1[:, i:i + nm[1]] ** 2 / d[i:i + nm[1]].unsqueeze(0) ** 2
                mask1[:, i:i + nm[1]] = ~nm_mask(group, *nm)
            col = w1[:, i]
            q = col.masked_fill(mask1[:, i], 0.0)
            q1[:, i] = q
            err = (col - q) / d[i]
            w1[:, i:] -= err.unsqueeze(1) @ u1[i, i:].unsqueeze(0)
            err1[:, i] = err
        w[:, i1:i2] = q1
        pruned[:, i1:i2] = mask1
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
    return w.masked_fill(pruned, 0.0), ~pruned


def _keep_top(scores: torch.Tensor, count: int) -> torch.Tensor:
    from prunus.weights.allocation import keep_top

    return keep_top(scores, count)


def _inverse_cholesky(h: torch.Tensor, dampening: float, name: str, tries: int = 6) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + λ·mean(diag H)·I)⁻¹``; on failure retry with 10× λ."""
    mean = float(torch.diagonal(h).mean())
    damp = dampening
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    for attempt in range(tries):
        lower, info = torch.linalg.cholesky_ex(h + damp * mean * eye)
        if int(info) == 0:
            inverse = torch.cholesky_inverse(lower)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if int(info) == 0:
                if attempt:
                    warnings.warn(f"SparseGPT: the Hessian of {name} is not positive definite with "
                                  f"dampening {dampening:g}; used {damp:g}.", stacklevel=4)
                return upper
        damp = max(damp * 10, 1e-4)
    raise PrunusError(f"SparseGPT: the Hessian of {name} stays singular even with dampening "
                      f"{damp:g}; use more calibration data.")


def global_magnitude_masks(layers: list[Layer], sparsity: float) -> dict[str, torch.Tensor]:
    """Global magnitude: keep the ``N − ⌊s·N⌋`` largest ``|W|`` over all pruned matrices
    (``(out, in)`` layout; ties: earlier layer and position kept)."""
    from prunus.weights.allocation import keep_top

    mats = [lay.matrix().abs() for lay in layers]
    flat = torch.cat([m.reshape(-1) for m in mats])
    keep = keep_top(flat, flat.numel() - fraction_count(sparsity, flat.numel()))
    out, start = {}, 0
    for lay, m in zip(layers, mats):
        out[lay.name] = keep[start:start + m.numel()].reshape(m.shape)
        start += m.numel()
    return out


# --------------------------------------------------------------------------- OWL


def owl_outlier_ratios(model: nn.Module, batches: list[Any], blocks: list[nn.Module],
                       layers: list[list[Layer]], threshold: float = 5.0,
                       step: Callable[[str], None] | None = None) -> list[float]:
    """OWL's outlier ratio of every block of the **dense** model: the share of the block's
    Wanda scores ``|W_ij|·‖X_j‖₂`` above ``threshold ×`` their mean over the block."""
    states = capture_inputs(model, blocks[0], batches)
    ratios = []
    for index, (block, group) in enumerate(zip(blocks, layers)):
        grams = layer_statistics(block, group, states, full=False)
        scores = torch.cat([wanda_scores(lay.matrix(), grams[lay.name][0]).reshape(-1)
                            for lay in group])
        ratios.append(float((scores > threshold * scores.mean()).double().mean()))
        del grams
        if index + 1 < len(blocks):
            states = propagate(block, states)
        if step is not None:
            step(f"outliers of block {index}")
    return ratios


def owl_sparsities(ratios: Sequence[float], sparsity: float, lam: float = 0.08) -> list[float]:
    """OWL (Yin et al. 2024): block sparsity ``s_l = s − (D̃_l − mean D̃)`` with
    ``D̃ = 2λ·(D − min D)/(max D − min D)``: more outliers, denser block; the sparsities span at
    most ``2λ`` and their mean is exactly ``s`` (all equal when the ratios are).

    Raises:
        PrunusError: a block sparsity outside [0, 1) (lower ``owl_lambda``).
    """
    d = torch.tensor(list(ratios), dtype=torch.float64)
    spread_ = float(d.max() - d.min())
    if spread_ == 0:
        return [float(sparsity)] * len(d)
    scaled = (d - d.min()) / spread_ * (2 * lam)
    out = (float(sparsity) - (scaled - scaled.mean())).tolist()
    if min(out) < 0 or max(out) >= 1:
        raise PrunusError(f"owl_lambda {lam:g} pushes a block sparsity outside [0, 1) at sparsity "
                          f"{sparsity:g}; lower owl_lambda.")
    return out



# --------------------------------------------------------------------------- model directories


def load_pretrained(path: str) -> tuple[nn.Module, Any, str]:
    """Load a model directory offline: ``(model, tokenizer or None, kind)`` with ``kind`` one
    of ``"causal"`` (a Hugging Face causal LM), ``"encoder"`` (any other Hugging Face model,
    e.g. BERT) or ``"sentence-transformers"`` (``"minilm"`` or a saved sentence-transformers
    directory).

    Raises:
        PrunusError: not a directory, or a directory that does not load.
    """
    from pathlib import Path

    from prunus.errors import reading

    if path == "minilm" or (Path(path) / "modules.json").is_file():
        from prunus.negatives.model import load_model

        with reading(path, "MODEL_DIR", "a sentence-transformers model directory"):
            model = load_model(path)
        return model, model.tokenizer, "sentence-transformers"
    if not Path(path).is_dir():
        raise PrunusError(f"MODEL_DIR must be 'minilm' or an existing model directory (got {path!r}).")
    from prunus.errors import require

    require("transformers", "lm")
    import transformers

    expected = "a Hugging Face model directory (config.json and weights)"
    with reading(path, "MODEL_DIR", expected), _quiet_transformers():
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
        architectures = getattr(config, "architectures", None) or []
        causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
        loader = transformers.AutoModelForCausalLM if causal else transformers.AutoModel
        model = loader.from_pretrained(path, local_files_only=True)
    tokenizer = None
    if any((Path(path) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")):
        from prunus.text.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(path)
    return model, tokenizer, "causal" if causal else "encoder"


def save_pruned(model: nn.Module, out: str, result: OneShotResult, tokenizer: Any = None,
                kind: str = "causal") -> None:
    """Write a pruned model to the directory ``out`` all at once
    (:func:`prunus.files.atomic_directory`): the model with masks baked in (``save_pretrained``, or a sentence-transformers
    save), ``masks.safetensors`` (:func:`prunus.weights.save`: weights and masks, so
    :func:`prunus.weights.load` restores the parametrizations), ``oneshot.json`` (the result)
    and the tokenizer.

    Raises:
        PrunusError: ``out`` exists and is not an empty directory, or cannot be written.
    """
    import json

    from prunus.files import atomic_directory
    from prunus.weights.masks import plain_copy, save

    def write(tmp):
        with _quiet_transformers():
            _save_model(plain_copy(model), tmp, tokenizer, kind)
        save(model, tmp / "masks.safetensors",
             metadata={"method": result.method, "pattern": result.pattern,
                       "sparsity": result.sparsity, "layer_sparsity": result.layer_sparsity})
        (tmp / "oneshot.json").write_text(json.dumps(result.summary(), indent=1))

    check_out_dir(out)
    atomic_directory(out, write)


def _save_model(plain: nn.Module, directory: Any, tokenizer: Any, kind: str) -> None:
    if kind == "sentence-transformers":
        plain.save(str(directory))
        return
    plain.save_pretrained(str(directory))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))


class _quiet_transformers:
    """Silence transformers' per-file progress bars (loading and writing weights)."""

    def __enter__(self) -> None:
        try:
            from transformers.utils import logging as hf_logging
        except ImportError:  # pragma: no cover - without transformers there is nothing to hide
            self.logging = None
            return
        self.logging = hf_logging
        self.enabled = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()

    def __exit__(self, *exc: object) -> None:
        if self.logging is not None and self.enabled:
            self.logging.enable_progress_bar()


def check_out_dir(out: str) -> None:
    """Fail early unless ``out`` is a new (or empty) directory whose parent accepts files.

    Raises:
        PrunusError: naming ``--out`` and the reason.
    """
    from pathlib import Path

    from prunus.files import check_writable

    target = Path(out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise PrunusError(f"--out {out!r} exists and is not an empty directory; give a new "
                          "directory name.")
    check_writable(target.with_name(f"{target.name}.probe"), "--out")
