"""Validated settings (pydantic). Every user-facing knob is checked here, once, with an error
that names the field and its allowed values."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from prunus.errors import PrunusError
from prunus.study.messages import describe_error

OptimizerName = Literal["sgd", "adam", "adamw"]
ScheduleName = Literal["constant", "cosine", "linear", "step", "onecycle"]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrainConfig(StrictModel):
    """How one model is trained: schedule, optimizer, batch size, seed, device."""

    epochs: int = Field(10, ge=1, description="passes over the (selected) training data")
    batch_size: int = Field(128, ge=1)
    eval_batch_size: int = Field(1024, ge=1)
    optimizer: OptimizerName = "adamw"
    lr: float = Field(3e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    schedule: ScheduleName = "onecycle"
    warmup: float = Field(0.1, ge=0, lt=1, description="fraction of steps spent warming up")
    step_size: float = Field(0.3, gt=0, le=1, description="'step' schedule: decay every fraction")
    gamma: float = Field(0.1, gt=0, le=1, description="'step' schedule: decay factor")
    betas: list[Annotated[float, Field(ge=0, lt=1)]] = Field(
        default_factory=lambda: [0.9, 0.999], min_length=2, max_length=2,
        description="Adam/AdamW betas")
    grad_clip: float | None = Field(None, gt=0, description="clip the gradient norm to this")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    seed: int = Field(0, ge=0)
    device: str = "auto"
    amp: bool = False
    compile: bool = False
    eval_every: int | None = Field(
        None, ge=1, description="evaluate every this many steps as well as after each epoch"
    )
    eval_every_examples: int | None = Field(
        None, ge=1,
        description="evaluate each time this many more examples have been backpropagated, "
        "and at the end, instead of after each epoch (one compute cadence for every arm)",
    )
    eval_at_start: bool = Field(False, description="evaluate before the first step too")
    eval_each_epoch: bool = Field(True, description="evaluate after every epoch (else only "
                                  "at eval_every steps and at the end)")
    examples: int | None = Field(
        None, ge=1,
        description="train for exactly this many examples backpropagated instead of `epochs` "
        "passes: ⌈examples / N⌉ epochs, the last one cut short, the LR schedule sized to it",
    )


def validated(model_cls: type[BaseModel], values: dict, where: str = "") -> BaseModel:
    """Build ``model_cls`` from ``values`` or raise one-sentence :class:`PrunusError` whose
    field names start with ``where`` (``train.lr``)."""
    try:
        return model_cls(**values)
    except ValidationError as exc:
        raise PrunusError(describe_error(exc, where=where)) from None
