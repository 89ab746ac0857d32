"""An exported model's labels mapping: read from the ONNX file, validated, checked against
the graph; and the names of the graph's input and output.

``trainer.export`` re-exports all of it; the tools read models through these functions.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trainer.data.transforms import EvalResize
from trainer.errors import UserError
from trainer.run_files import LABELS_MAPPING_JSON

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
SIDECAR_NAME = LABELS_MAPPING_JSON


class OnnxModelError(UserError, ValueError):
    """An ONNX file is missing, unreadable, or lacks the labels mapping."""


def split_entry(seed: Any, val_fraction: Any) -> dict[str, Any] | None:
    """The labels mapping's ``split`` entry: how the run split a tree of class folders.

    ``tools/evaluate.py`` needs it to score the run's own validation images of such a tree,
    not a fresh split that mixes in training images. None when either value is unknown.
    """
    if seed is None or val_fraction is None:
        return None
    return {"seed": int(seed), "val_fraction": float(val_fraction)}


def classes_of(mapping: Mapping[str, Any]) -> list[str]:
    """A labels mapping's class names, by output index."""
    idx_to_class = mapping["idx_to_class"]
    return [str(idx_to_class[str(i)]) for i in range(len(idx_to_class))]


def validate_labels_mapping(mapping: Any, source: str) -> dict[str, Any]:
    """Check a labels mapping's structure before anything trusts it; return it as a dict,
    with ``num_classes`` filled in when it lacks one (files written before it was added).

    Raises:
        OnnxModelError: naming ``source`` and the first problem found.
    """

    def bad(problem: str) -> OnnxModelError:
        return OnnxModelError(
            f"the labels mapping in {source} is malformed: {problem}. Re-export the model, or "
            "copy the run's labels_mapping.json beside it."
        )

    if not isinstance(mapping, dict):
        raise bad(f"expected a JSON object, found {type(mapping).__name__}")
    idx_to_class = mapping.get("idx_to_class")
    if not isinstance(idx_to_class, dict) or not idx_to_class:
        raise bad("'idx_to_class' must be a non-empty object of index -> class name")
    expected = {str(i) for i in range(len(idx_to_class))}
    if set(idx_to_class) != expected:
        raise bad(f"'idx_to_class' keys must be 0..{len(idx_to_class) - 1}")
    if not all(isinstance(v, str) for v in idx_to_class.values()):
        raise bad("'idx_to_class' values must be class names (strings)")
    num_classes = mapping.get("num_classes", len(idx_to_class))  # files before it lack it
    if num_classes != len(idx_to_class) or isinstance(num_classes, bool):
        raise bad(
            f"'num_classes' is {num_classes!r} but 'idx_to_class' names {len(idx_to_class)} classes"
        )
    class_to_idx = mapping.get("class_to_idx")
    if class_to_idx is not None and class_to_idx != {v: int(k) for k, v in idx_to_class.items()}:
        raise bad("'class_to_idx' and 'idx_to_class' disagree")
    size = mapping.get("image_size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise bad(f"'image_size' must be a positive integer, found {size!r}")
    try:  # crop_pct, resize_mode: refused when this version cannot honour them
        EvalResize.from_mapping(mapping)
    except ValueError as e:
        raise OnnxModelError(f"the labels mapping in {source} {e}.") from e
    norm = mapping.get("normalization")
    ok = isinstance(norm, dict) and all(
        isinstance(norm.get(k), list)
        and len(norm[k]) == 3
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in norm[k])
        for k in ("mean", "std")
    )
    if not ok or not all(x > 0 for x in norm["std"]):  # type: ignore[index]
        raise bad("'normalization' must hold 'mean' and 'std', 3 numbers each, std > 0")
    split = mapping.get("split")
    if split is not None and not (
        isinstance(split, dict)
        and isinstance(split.get("seed"), int)
        and isinstance(split.get("val_fraction"), (int, float))
        and 0 <= split["val_fraction"] < 1
    ):
        raise bad("'split' must hold an integer 'seed' and a 'val_fraction' in [0, 1)")
    cuts = mapping.get("thresholds")  # multi-label: one per class, probabilities
    if cuts is not None and not (
        isinstance(cuts, list) and len(cuts) == len(idx_to_class)
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x <= 1
                for x in cuts)
    ):  # fmt: skip
        raise bad(f"'thresholds' must hold {len(idx_to_class)} numbers in [0, 1], one per class")
    return {**mapping, "num_classes": num_classes}


def read_onnx_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the labels mapping of an ONNX model exported by :func:`export_onnx`.

    Looks in the model's ``metadata_props`` first, then in a ``labels_mapping.json`` beside it.

    Raises:
        OnnxModelError: The file is missing or not ONNX, or neither place holds a mapping.
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        raise OnnxModelError(
            f"ONNX model not found: {path}. Pass the model.onnx written by training "
            "(runs/<name>/model.onnx) or by tools/export.py."
        )
    try:
        # External weights are not needed for the metadata, and may live elsewhere.
        proto = onnx.load(path, load_external_data=False)
    except Exception as exc:  # protobuf raises a variety of decode errors
        raise OnnxModelError(
            f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc}). "
            "Pass a .onnx file exported by this trainer."
        ) from exc
    props = {p.key: p.value for p in proto.metadata_props}
    if "labels_mapping" in props:
        source = f"the 'labels_mapping' metadata of {path}"
        try:
            return validate_labels_mapping(json.loads(props["labels_mapping"]), source)
        except json.JSONDecodeError as exc:
            raise OnnxModelError(
                f"{path} has a corrupt 'labels_mapping' metadata entry ({exc}); re-export it."
            ) from exc
    sidecar = path.with_name(SIDECAR_NAME)
    if sidecar.is_file():
        try:
            raw = json.loads(sidecar.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:  # a ValueError, but not a JSONDecodeError
            raise OnnxModelError(
                f"Cannot read labels mapping {sidecar}: it is not UTF-8 text ({exc.reason} at "
                f"byte {exc.start}). Copy the run's {SIDECAR_NAME} next to the model again, or "
                "re-export the model, which stores the mapping inside it."
            ) from exc
        except (OSError, json.JSONDecodeError) as exc:
            raise OnnxModelError(f"Cannot read labels mapping {sidecar}: {exc}") from exc
        return validate_labels_mapping(raw, str(sidecar))
    raise OnnxModelError(
        f"No labels mapping for {path}: the model's metadata has no 'labels_mapping' entry and "
        f"there is no {sidecar}. Re-export with trainer.export.export_onnx, or copy the run's "
        f"{SIDECAR_NAME} next to the model."
    )


def check_onnx_signature(
    session: Any, path: str | os.PathLike[str], mapping: Mapping[str, Any]
) -> None:
    """Check an onnxruntime session's input and output against the model's labels mapping.

    A labels mapping from another model (a stale ``labels_mapping.json`` beside the file, or a
    model exported elsewhere) would put wrong names on the outputs; this refuses it up front.
    Dimensions the graph leaves symbolic are not checked here.

    Raises:
        OnnxModelError: the graph lacks ``input``/``logits``, takes another image size or
            channel count, or outputs another number of classes than the mapping names.
    """
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    if INPUT_NAME not in inputs or OUTPUT_NAME not in outputs:
        raise OnnxModelError(
            f"{path} has inputs {sorted(inputs)} and outputs {sorted(outputs)}; a model exported "
            f"by this trainer takes {INPUT_NAME!r} and returns {OUTPUT_NAME!r}. Export it with "
            "tools/export.py."
        )
    fix = (
        "The labels mapping does not belong to this model: re-export it with tools/export.py, "
        f"or put the run's {SIDECAR_NAME} beside it."
    )
    size = int(mapping["image_size"])
    shape = list(inputs[INPUT_NAME].shape)
    fixed = [d if isinstance(d, int) else None for d in shape[1:]]
    if len(shape) == 4 and fixed[0] not in (None, 3):
        raise OnnxModelError(f"{path} takes {fixed[0]}-channel images, not RGB. {fix}")
    if len(shape) == 4 and any(d is not None and d != size for d in fixed[1:]):
        raise OnnxModelError(
            f"{path} takes {shape[2]}x{shape[3]} images, but its labels mapping says "
            f"image_size {size}. {fix}"
        )
    check_num_outputs(outputs[OUTPUT_NAME].shape[-1:], path, len(mapping["idx_to_class"]))


def check_num_outputs(dims: Any, path: str | os.PathLike[str], num_classes: int) -> None:
    """Raise OnnxModelError when ``dims`` (the logits' last dimension) is not ``num_classes``."""
    n = dims[-1] if len(dims) else None
    if isinstance(n, int) and n != num_classes:
        raise OnnxModelError(
            f"{path} outputs {n} scores per image, but its labels mapping names {num_classes} "
            "classes. The labels mapping does not belong to this model: re-export it with "
            f"tools/export.py, or put the run's {SIDECAR_NAME} beside it."
        )
