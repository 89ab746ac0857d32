"""The settings of a run, each declared once: name, type, default, help and group.

Every setting is a field of one of the group dataclasses below, made with ``setting()``. The
command line (``trainer.config_cli`` builds tools/train.py's flags and ``--help`` from these
fields), ``--config`` files, ``--print-config``, the run's ``args.json``, the arguments stored in
checkpoints and the arguments of ``ImageFolderData``, ``Engine`` and ``hooks.default_hooks`` are
all derived from them. Adding a setting is one ``setting()`` line here plus the code that uses it;
``to=("data",)`` (or ``"engine"``) already passes it to that constructor by name.

``TrainConfig`` holds every group's fields flat, as ``args.json`` does: ``cfg.epochs``,
``cfg.img_size``. Some defaults are None: the demo's or ``--data``'s value fills them
(``trainer.data.demo``), see ``TrainConfig.resolved``.

Example:
    >>> cfg = TrainConfig(data="flowers", epochs=5).resolved()
    >>> cfg.img_size, cfg.engine_kwargs()["max_epochs"]
    (224, 5)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from trainer.config_data import DataConfig
from trainer.config_fields import (
    DATA,
    ENGINE,
    HOOKS,
    RECIPES,
    lr_problem,
    lr_value,
    model_problem,
    number,
    setting,
    val_every_problem_text,
)
from trainer.data.augment import AUTO_AUGMENT, Augment
from trainer.data.demo import DATA_DEFAULTS, DEMO_DEFAULTS
from trainer.errors import ConfigError
from trainer.metrics import monitor_mode
from trainer.models import MODELS, TIMM_PREFIX


# ------------------------------------------------------------------------------ groups
@dataclass
class RecipeConfig:
    group: ClassVar[str] = "recipe"

    recipe: str | None = setting(
        None,
        "defaults for a kind of run (explicit flags win): quick (5 epochs), finetune "
        "(pretrained, lr / 10, EMA, light augmentation), scratch (TrivialAugment, random "
        "erasing, MixUp/CutMix, label smoothing, twice the epochs); see the README",
        choices=tuple(sorted(RECIPES)),
    )


@dataclass
class AugmentConfig:
    """``trainer.data.augment.Augment``'s fields (same names), and custom pipelines."""

    group: ClassVar[str] = "augmentation (training images; each off by default)"

    auto_augment: str = setting(
        "none", "an AutoAugment-style policy from torchvision.transforms.v2", choices=AUTO_AUGMENT
    )
    random_erasing: float = setting(
        0.0, "probability of erasing a random box to the mean colour", metavar="P"
    )
    jpeg_quality: int = setting(
        0, "re-encode as JPEG with a quality drawn from [LOW, 100]; 0 is off", metavar="LOW"
    )
    blur: float = setting(
        0.0, "probability of a Gaussian blur (kernel 7, sigma 0.1 to 2)", metavar="P"
    )
    noise: float = setting(
        0.0, "probability of Gaussian noise (sigma 0.08 of the range)", metavar="P"
    )
    downscale: float = setting(
        0.0, "shrink by a factor drawn from [LOW, 1] and scale back; 0 is off", metavar="LOW"
    )
    affine: float = setting(
        0.0,
        "probability of a random affine map (rotate 15, shift 10%, scale 0.9-1.1, shear 10)",
        metavar="P",
    )
    perspective: float = setting(
        0.0, "probability of a random perspective warp (distortion 0.3)", metavar="P"
    )
    mixup: float = setting(
        0.0, "MixUp on the device, Beta(ALPHA, ALPHA); 0 is off", metavar="ALPHA",
        check=number("mixup", 0, hint=" (0 is off)"),
    )
    cutmix: float = setting(
        0.0,
        "CutMix on the device, Beta(ALPHA, ALPHA); 0 is off (both on: one per batch)",
        metavar="ALPHA",
        check=number("cutmix", 0, hint=" (0 is off)"),
    )
    transforms: str | None = setting(
        None,
        "your own pipelines: FILE.py defines train_transforms(img_size) and "
        "val_transforms(img_size) returning v2 transforms on uint8 tensors",
        metavar="FILE.py",
    )


@dataclass
class ModelConfig:
    group: ClassVar[str] = "model"

    model: str | None = setting(
        None,
        f"architecture: {', '.join(sorted(MODELS))}, or {TIMM_PREFIX}<name> for any timm "
        "model (needs the [timm] extra)",
        demo=True,
        metavar="NAME",
        check=model_problem,
    )
    pretrained: bool = setting(
        False, "start from ImageNet weights, torchvision's or timm's (downloads once)"
    )


@dataclass
class OptimConfig:
    group: ClassVar[str] = "optimisation"

    epochs: int | None = setting(None, "epochs", to=(ENGINE,), engine_name="max_epochs", demo=True,
                                 check=number("epochs", 1))  # fmt: skip
    lr: float | str | None = setting(
        None,
        "peak learning rate; auto: run the LR range test first (tools/lr_find.py) and use "
        "its suggestion",
        to=(ENGINE,),
        demo=True,
        parse=lr_value,
        check=lr_problem,
    )
    weight_decay: float = setting(0.05, "AdamW weight decay", to=(ENGINE,),
                                  check=number("weight_decay", 0))  # fmt: skip
    warmup_epochs: float = setting(1.0, "linear warmup length", to=(ENGINE,),
                                   check=number("warmup_epochs", 0))  # fmt: skip
    label_smoothing: float = setting(0.1, "cross-entropy smoothing", to=(ENGINE,),
                                     check=number("label_smoothing", 0, 1, below_high=True))  # fmt: skip
    loss: str = setting(
        "ce",
        "training loss: ce is cross-entropy, binary per class on multi-label data (also "
        "named bce); asl: asymmetric loss (multi-label)",
        choices=("ce", "focal", "bce", "asl"),
    )
    loss_weights: str = setting(
        "none",
        "balanced weights the loss by inverse class frequency (multi-label: each class's "
        "positives by its negatives/positives ratio)",
        choices=("none", "balanced"),
    )
    precision: str = setting(
        "auto",
        "auto: bf16 on CUDA where supported, fp16 on other CUDA, fp32 on CPU",
        to=(ENGINE,),
        choices=("auto", "32", "16-mixed", "bf16-mixed"),
    )
    ema_decay: float = setting(
        0.0,
        "EMA of the weights (e.g. 0.999), used for val and export; 0 disables",
        to=(ENGINE,),
        check=number("ema_decay", 0, 1, below_high=True, hint=" (e.g. 0.999; 0 disables)"),
    )
    grad_clip: float = setting(0.0, "clip gradient norm; 0 disables", to=(ENGINE,),
                               check=number("grad_clip", 0, hint=" (0 disables)"))  # fmt: skip
    accumulate: int = setting(1, "batches per optimizer step", to=(ENGINE,),
                              check=number("accumulate", 1))  # fmt: skip
    compile: bool = setting(False, "torch.compile the model", to=(ENGINE,), switch=True)
    sync_bn: bool = setting(
        False,
        "under torchrun on GPUs: BatchNorm statistics over the global batch",
        to=(ENGINE,),
        switch=True,
    )


@dataclass
class RunConfig:
    group: ClassVar[str] = "run"

    out: str | None = setting(None, "run folder; default runs/<timestamp>")
    device: str = setting("auto", "auto, cpu, cuda, cuda:N or mps", to=(ENGINE,))
    seed: int = setting(0, "seeds the split, sampling and init", to=(DATA, ENGINE))
    monitor: str | None = setting(
        None,
        "metric for best.pt and early stopping; default: the task's, val/acc (multi-label "
        "data: val/mAP)",
        to=(ENGINE, HOOKS),
    )
    top_k: int = setting(1, "also keep the k best epochs' checkpoints", to=(HOOKS,),
                         check=number("top_k", 0))  # fmt: skip
    early_stopping: int = setting(
        0,
        "stop after this many epochs without improvement; 0 disables",
        to=(HOOKS,),
        metavar="PATIENCE",
        check=number("early_stopping", 0, hint=" (0 disables)"),
    )
    min_delta: float = setting(
        0.0,
        "for --early-stopping: an improvement must beat the best by more than this",
        to=(HOOKS,),
        check=number("min_delta", 0),
    )
    sanity_steps: int = setting(2, "val batches before training", to=(ENGINE,),
                                check=number("sanity_steps", 0, hint=" (0 skips the check)"))  # fmt: skip
    quiet: bool = setting(
        False, "only the epoch lines, warnings and the final summary", switch=True
    )
    verbose: bool = setting(
        False,
        "everything: the model table and the sampler table every epoch",
        switch=True,
    )


@dataclass
class CommandConfig:
    """Flags about one invocation, not the run: ``args.json`` leaves them out, so replaying it
    is safe."""

    group: ClassVar[str] = "run"

    resume: str | None = setting(
        None,
        "continue from PATH (a .pt file or a run folder); alone: from --out",
        metavar="PATH",
        const="auto",
        saved=False,
    )
    overwrite: bool = setting(
        False,
        "start a new run in an --out that holds one, deleting that run's files first",
        switch=True,
        saved=False,
    )
    config: str | None = setting(
        None,
        "replay a run's args.json, or a YAML file with the same keys; flags given here win",
        metavar="FILE",
        saved=False,
    )
    print_config: bool = setting(
        False,
        "print the resolved configuration (what args.json would hold) and exit",
        switch=True,
        saved=False,
    )
    format: str = setting(
        "json",
        "--print-config's format; both replay with --config",
        choices=("json", "yaml"),
        saved=False,
    )


@dataclass
class OutputConfig:
    group: ClassVar[str] = "outputs (each on by default)"

    confusion_matrix: bool = setting(True, "per-epoch confusion matrix heatmaps", to=(HOOKS,))
    dataset_stats: bool = setting(True, "class distribution table", to=(HOOKS,))
    model_info: bool = setting(True, "model summary", to=(HOOKS,))
    history_plots: bool = setting(True, "loss/accuracy/lr curves", to=(HOOKS,))
    sampler_stats: bool = setting(True, "per-epoch sampler class counts", to=(HOOKS,))
    samples: bool = setting(True, "predicted-vs-true image grids", to=(HOOKS,))
    most_confused: bool = setting(True, "most_confused.csv: most confused class pairs", to=(HOOKS,))
    top_losses: bool = setting(True, "top_losses.csv + grid: highest-loss val images", to=(HOOKS,))
    find_label_issues: bool = setting(
        False, "label_issues.csv + grid: training images ranked by area under the margin (each "
        "draw's given-label logit minus the largest other), likely wrong labels first", to=(HOOKS,),
    )  # fmt: skip
    export: bool = setting(True, "ONNX export at the end, verified with onnxruntime", to=(HOOKS,))
    report: bool = setting(
        True, "report.html: the whole run on one page, rewritten each epoch", to=(HOOKS,)
    )
    tensorboard: bool = setting(
        False,
        "TensorBoard event files in OUT/tensorboard (off by default; needs the [tensorboard] "
        "extra)",
        to=(HOOKS,),
    )


@dataclass
class MetricsConfig:
    group: ClassVar[str] = "metrics and validation"

    val_every: float = setting(
        1.0,
        "also validate every fraction F of an epoch (0 < F <= 1, e.g. 0.25) or every N "
        "optimizer steps (integer N > 1); best.pt and early stopping follow each validation",
        to=(ENGINE,),
        metavar="F|N",
        check=val_every_problem_text,
    )
    log_every: int = setting(
        50,
        "a steps.csv row (loss, lr, img/s) every N optimizer steps; 0: no steps.csv",
        to=(HOOKS,),
        metavar="N",
        check=number("log_every", 0, hint=" (0 turns steps.csv off)"),
    )
    per_class: bool = setting(
        True, "per_class.csv: accuracy, precision, recall, F1 and support per class", to=(HOOKS,)
    )
    calibration: bool = setting(
        True,
        "plots/reliability.png, the reliability diagram (val/ece is always in metrics.csv)",
        to=(HOOKS,),
    )


@dataclass
class WandbConfig:
    group: ClassVar[str] = "Weights & Biases (needs the [wandb] extra)"

    wandb: bool = setting(
        False, "log the run to W&B (offline with WANDB_MODE=offline); files in OUT/wandb"
    )
    wandb_project: str | None = setting(None, "W&B project", metavar="NAME")
    wandb_name: str | None = setting(None, "W&B run name", metavar="NAME")
    wandb_tags: str | None = setting(None, "comma-separated W&B run tags", metavar="TAG,...")
    wandb_artifacts: bool = setting(
        False, "upload model.onnx, export_report.json and report.html as W&B artefacts"
    )


# The groups in --help's order; TrainConfig holds all but CommandConfig.
GROUPS: tuple[type, ...] = (
    DataConfig, RecipeConfig, AugmentConfig, ModelConfig, OptimConfig,
    RunConfig, CommandConfig, OutputConfig, MetricsConfig, WandbConfig,
)  # fmt: skip


@dataclass
class TrainConfig(
    WandbConfig,
    MetricsConfig,
    OutputConfig,
    RunConfig,
    OptimConfig,
    ModelConfig,
    AugmentConfig,
    RecipeConfig,
    DataConfig,
):
    """A run's settings, every group's fields flat (what ``args.json`` holds).

    Raises:
        ConfigError: a value fails its setting's check (``--lr -1``, ``--val-every 0``...).
    """

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check = f.metadata.get("check")
            problem = check(getattr(self, f.name)) if check else None
            if problem:
                raise ConfigError(problem)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """The config of ``values`` (e.g. a parsed command line); keys that are not settings
        of a run (``resume``, ``pipeline``...) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        """Every setting by name, group by group: ``args.json`` without its ``pipeline``."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def resolved(self) -> TrainConfig:
        """A copy with the None defaults filled: the demo's without ``data``, else --data's;
        ``class_weights`` implies the manual sampler."""
        base = DEMO_DEFAULTS if self.data is None else DATA_DEFAULTS
        # --data's crop scale is left unset: the data fills it by its task (ImageFolderData).
        filled = {k: v for k, v in base.items() if getattr(self, k) is None
                  and (self.data is None or k not in TASK_SETTINGS)}  # fmt: skip
        if self.class_weights and self.sampler == "none":
            filled["sampler"] = "manual"
        return dataclasses.replace(self, **filled)

    def _for(self, target: str) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            if target in f.metadata.get("to", ()):
                value, convert = getattr(self, f.name), f.metadata.get("convert")
                name = f.metadata.get("engine_name") if target == ENGINE else None
                out[name or f.name] = convert(value) if convert else value
        return out

    def augment(self) -> Augment:
        """The ``Augment`` the augmentation settings describe."""
        return Augment(**{f.name: getattr(self, f.name) for f in dataclasses.fields(Augment)})

    def data_kwargs(self) -> dict[str, Any]:
        """``ImageFolderData(root, **cfg.data_kwargs())``'s keyword arguments (not the custom
        pipelines of ``transforms``, which the caller loads: they run the user's code)."""
        return {**self._for(DATA), "augment": self.augment()}

    def engine_kwargs(self) -> dict[str, Any]:
        """``Engine(model, data, **cfg.engine_kwargs())``'s keyword arguments."""
        # Unset, the engine monitors its task's metric (val/acc, val/mAP): maxima both.
        mode = "max" if self.monitor is None else monitor_mode(self.monitor)
        return {**self._for(ENGINE), "mode": mode}

    def hook_kwargs(self) -> dict[str, Any]:
        """The settings ``hooks.default_hooks`` reads."""
        return self._for(HOOKS)


# Settings whose unset value the data's task fills (trainer.data.label_sets.TASK_DATA_DEFAULTS)
# and the engine's (``monitor``); tools/train.py records the values in use in args.json.
TASK_SETTINGS: tuple[str, ...] = ("crop_scale", "val_resize", "monitor")
# Names of the settings args.json leaves out (the invocation's own flags).
NOT_SAVED: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(CommandConfig))
