"""Training: the GAE / NCN / NCNC models, graph input, the training loop, checkpoints.

Needs the ``[train]`` extra (PyG, matplotlib, onnx); importing without it is one line saying so.
"""

from ncnc.core.extras import require

require("torch_geometric", "matplotlib", "onnx", extra="train",
        purpose="training and evaluation (ncnc train, ncnc evaluate)")

from ncnc.trainer.api import TrainRequest, evaluate, train
from ncnc.trainer.config import ModelConfig, TrainConfig

__all__ = ["ModelConfig", "TrainConfig", "TrainRequest", "evaluate", "train"]
