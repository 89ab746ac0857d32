"""ModelInfoHook: what is being trained (size, input, precision, device)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from hooks.render.tables import model_line, model_table
from hooks.render.verbosity import Verbosity, check_verbosity
from trainer.artifacts import guarded
from trainer.distributed import rank_zero_only
from trainer.hook import Hook
from trainer.io import atomic_write_json
from trainer.run_files import MODEL_INFO_JSON

if TYPE_CHECKING:
    from rich.console import Console

    from trainer.engine import Engine


class ModelInfoHook(Hook):
    """At fit start: prints a model summary and writes ``model_info.json``.

    ``model_info.json`` holds ``model``, ``parameters``, ``trainable_parameters``, ``size_bytes``
    and ``size_mb`` (parameters and buffers; 10^6 bytes, as torchinfo and Lightning count), ``input_size``
    ``[3, H, W]``, ``num_classes``, ``precision`` and ``device``. (``labels_mapping.json`` is the run
    folder's: ``hooks.run_folder.RunFolderHook`` writes it.)

    Args:
        out_dir: the run folder.
        model_name: shown name; defaults to ``engine.args["model"]``, else the model's class.
        console: where the table goes; a fresh ``rich.console.Console()`` (stdout) by default.
        verbosity: "verbose" prints the table, "normal" one line, "quiet" nothing
            (``hooks.render.verbosity``).

    Attributes:
        info: the dict written to ``model_info.json``.

    Example:
        >>> hook = ModelInfoHook("runs/a", model_name="resnet18")
        >>> Engine(model, data, hooks=[hook]).fit()
        >>> hook.info["parameters"]
    """

    order = 30

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        model_name: str | None = None,
        console: Console | None = None,
        verbosity: Verbosity = "verbose",
    ) -> None:
        self.out_dir = Path(out_dir)
        self.model_name = model_name
        self.console = console
        self.verbosity = check_verbosity(verbosity)
        self.info: dict[str, Any] = {}

    @rank_zero_only  # rank 0 writes the files under DDP
    def on_fit_start(self, engine: Engine) -> None:
        data: Any = engine.data
        img_size = getattr(data, "img_size", None) or engine.args.get("img_size")
        self.info = {
            "model": self.model_name or engine.args.get("model") or type(engine.model).__name__,
            **model_size(engine.model),
            "input_size": [3, int(img_size), int(img_size)] if img_size else None,
            "num_classes": data.num_classes,
            "precision": engine.precision,
            "device": str(engine.device),
        }
        from rich.console import Console  # deferred: only needed once a fit starts

        console = self.console or Console()
        if self.verbosity == "verbose":
            console.print(model_table(self.info))
        elif self.verbosity == "normal":
            console.print(model_line(self.info), markup=False, highlight=False, soft_wrap=True)
        path = self.out_dir / MODEL_INFO_JSON
        with guarded(path):
            atomic_write_json(path, self.info)


def model_size(model: nn.Module) -> dict[str, Any]:
    """Parameter counts and the weights' size in MB (10^6 bytes), buffers included."""
    params = list(model.parameters())
    nbytes = sum(p.numel() * p.element_size() for p in params)
    nbytes += sum(b.numel() * b.element_size() for b in model.buffers())
    return {
        "parameters": sum(p.numel() for p in params),
        "trainable_parameters": sum(p.numel() for p in params if p.requires_grad),
        "size_bytes": nbytes,
        "size_mb": round(nbytes / 1e6, 6),
    }
