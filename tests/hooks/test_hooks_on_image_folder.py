"""All six observability hooks together on the real ImageFolderData (the data contract)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from hooks.confusion_matrix import ConfusionMatrixHook
from hooks.dataset_statistics import DatasetStatisticsHook
from hooks.model_info import ModelInfoHook
from hooks.run_folder import RunFolderHook
from hooks.sample_visualization import SampleVisualizationHook
from hooks.sampler_distribution import SamplerDistributionHook
from hooks.training_history import TrainingHistoryHook
from tests.conftest import make_tree, png_size, quiet_console
from trainer.data import ImageFolderData
from trainer.engine import Engine
from trainer.models import build_model


def test_all_hooks_on_an_image_folder(tmp_path: Path) -> None:
    # Class names that are markup to rich and mathtext to matplotlib must still come through.
    root = make_tree(tmp_path / "tree", {"cat": 6, "dog": 5, "b[i]rd $x$": 4})
    data = ImageFolderData(root, img_size=16, batch_size=4, workers=0, sampler="balanced")
    out = tmp_path / "run"
    viz = SampleVisualizationHook(out, num_images=6)
    hooks = [
        RunFolderHook(out),  # labels_mapping.json
        ConfusionMatrixHook(out),
        DatasetStatisticsHook(out, console=quiet_console()),
        ModelInfoHook(out, console=quiet_console()),
        TrainingHistoryHook(out),
        SamplerDistributionHook(out, console=quiet_console()),
        viz,
    ]
    engine = Engine(build_model("small_cnn", 3), data, max_epochs=1, hooks=hooks, device="cpu")
    engine.fit()
    for png in out.rglob("*.png"):
        png_size(png)
    assert len(list(out.rglob("*.png"))) == 8  # 3 curves, 2 distributions, 1 matrix, 2 grids
    cm = json.loads((out / "plots/confusion_matrix/epoch_000.json").read_text())
    assert sum(map(sum, cm["matrix"])) == len(data.val_samples) == 15
    mapping = json.loads((out / "labels_mapping.json").read_text())
    assert mapping["class_to_idx"] == data.class_to_idx
    stats = json.loads((out / "dataset_stats.json").read_text())
    assert stats["splits"]["train"]["counts"] == {"b[i]rd $x$": 4, "cat": 6, "dog": 5}
    # Fixed images come from the batches; they must be the val images at those indices (the
    # batch hooks get them normalised, as the model does: undone, they are the pixels).
    val = data.val_loader().dataset
    m, sd = torch.tensor(data.mean).view(3, 1, 1), torch.tensor(data.std).view(3, 1, 1)
    for g, img in viz.fixed_images.items():
        assert torch.equal(((img * sd + m) * 255).round().to(torch.uint8), val[g][0])
