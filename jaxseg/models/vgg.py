"""VGG16 (Simonyan & Zisserman 2015) as a fully convolutional trunk.

Layer names follow VGG16's one to one (conv1_1 ... conv5_3, fc6, fc7, fc8) so that ImageNet
weights transplant by name (`jaxseg/models/pretrained.py`). fc6/fc7/fc8 are
"convolutionalized" (Long et al. 2015, section 3.1): fc6 is a 7x7 conv with 4096 filters over
pool5, fc7 and fc8 are 1x1 convs, so the classifier slides over inputs larger than 224 x 224 and
returns a spatial map of scores instead of one vector.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg.models.layers import PatchMatmulConv, conv, max_pool_2x2

# (number of convs, channels) per block, VGG16's configuration "D".
VGG16_BLOCKS = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))


class VGG16(nn.Module):
    """VGG16 trunk returning the feature maps FCN taps.

    Attributes:
      first_conv_padding: spatial zero padding of conv1_1. 1 is VGG's; the FCN reference release
        uses 100 so that the 7x7 fc6 has enough support for any input size.
      ceil_mode: Caffe-style ceil rounding in the 2x2 max-pools (the reference release's).
      fc6_padding: "VALID" (VGG's and the reference's: 224 -> 1x1, 320 -> 4x4) or "SAME"
        (keeps pool5's size; used by the padded alignment mode).
      include_fc8: also apply the 1000-way ImageNet classifier fc8 as a 1x1 conv.
      dropout_rate: dropout after fc6 and fc7 (0.5 in VGG and FCN).
      dtype: computation dtype (params stay float32).
    """

    first_conv_padding: int = 1
    ceil_mode: bool = False
    fc6_padding: str = "VALID"
    include_fc8: bool = False
    dropout_rate: float = 0.5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> dict[str, jax.Array]:
        """x: [N, H, W, 3] -> {"pool3": [N, H/8, W/8, 256], "pool4": [.., 512], "pool5",
        "fc7": [N, h, w, 4096] after ReLU (and dropout when training), "fc8" if included}."""
        features = {}
        for block, (num_convs, channels) in enumerate(VGG16_BLOCKS, start=1):
            for i in range(1, num_convs + 1):
                pad = self.first_conv_padding if (block, i) == (1, 1) else 1
                x = conv(  # the reference's 100 px: layers.WidePaddingConv, via conv
                    channels,
                    (3, 3),
                    padding=((pad, pad), (pad, pad)),
                    dtype=self.dtype,
                    name=f"conv{block}_{i}",
                )(x)
                x = nn.relu(x)
            x = max_pool_2x2(x, ceil_mode=self.ceil_mode)
            features[f"pool{block}"] = x
        # fc6 as one matmul over 7x7 patches: same parameters and outputs as nn.Conv, with a
        # much faster gradient on XLA:CPU (tests/test_layers.py proves them equal).
        x = PatchMatmulConv(4096, (7, 7), self.fc6_padding, dtype=self.dtype, name="fc6")(x)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(nn.relu(x))
        x = conv(4096, (1, 1), dtype=self.dtype, name="fc7")(x)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(nn.relu(x))
        features["fc7"] = x
        if self.include_fc8:
            features["fc8"] = nn.Conv(1000, (1, 1), dtype=self.dtype, name="fc8")(x)
        return features
