"""The three networks of 4D-PreNet, in Flax Linen (pure functions of parameters).

:class:`UNet` (the CBAM denoiser with ``cbam=True``, the heatmap centre network
without) and :class:`ResNet` (ResNet-50 bottleneck blocks by default), with their
size configurations.
"""

from ._networks import CBAM, ResNet, ResNetConfig, UNet, UNetConfig, count_params

__all__ = ["CBAM", "ResNet", "ResNetConfig", "UNet", "UNetConfig", "count_params"]
