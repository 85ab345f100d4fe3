"""EfficientNet-Lite0's architecture from the ``efficientnet-lite-pytorch`` wheel, as a class that
``edgekiln --model-class tests/zoo/effnet_lite0.py:EfficientNetLite0 --weights <state dict>`` can construct
(the package's own ``EfficientNet`` takes block arguments that do not fit ``--model-kwargs``)."""

from __future__ import annotations

from efficientnet_lite_pytorch import EfficientNet
from efficientnet_lite_pytorch.utils import get_model_params


class EfficientNetLite0(EfficientNet):
    def __init__(self, num_classes: int = 1000) -> None:
        blocks_args, global_params = get_model_params("efficientnet-lite0", {"num_classes": num_classes})
        super().__init__(blocks_args, global_params)
