"""In a notebook every plotting hook hands back its latest figure (issue 7, part 4)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure
from PIL import Image

from hooks import default_hooks
from hooks.training_history import TrainingHistoryHook
from tests.conftest import run_fit


def test_every_plotting_hook_keeps_its_latest_figure(tmp_path: Path) -> None:
    hooks = default_hooks(tmp_path, progress=False, export=False)
    history = run_fit(hooks, epochs=1).state.history
    assert len(history) == 1
    plotting = [h for h in hooks if hasattr(h, "figure")]
    names = {type(h).__name__ for h in plotting}
    assert names == {
        "CalibrationHook",
        "ConfusionMatrixHook",
        "DatasetStatisticsHook",
        "SampleVisualizationHook",
        "SamplerDistributionHook",
        "TopLossesHook",
        "TrainingHistoryHook",
    }
    for hook in plotting:
        # The sample grids are drawn with PIL (fast); a notebook displays either kind.
        assert isinstance(hook.figure, Figure | Image.Image), type(hook).__name__
    history_hook = next(h for h in hooks if isinstance(h, TrainingHistoryHook))
    assert set(history_hook.figures) == {"loss", "accuracy", "lr"}
