"""A pure-PyTorch image-classifier trainer."""

from trainer.data import ImageFolderData
from trainer.data.sampler import TrackingWeightedRandomSampler
from trainer.ema import ModelEMA
from trainer.engine import Engine
from trainer.hook import Hook
from trainer.models import build_model
from trainer.onnx_classifier import OnnxClassifier
from trainer.rng import seed_everything
from trainer.state import EngineState

__all__ = [
    "Engine",
    "EngineState",
    "Hook",
    "ImageFolderData",
    "ModelEMA",
    "OnnxClassifier",
    "TrackingWeightedRandomSampler",
    "build_model",
    "seed_everything",
]
