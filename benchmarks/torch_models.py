"""The PyTorch peers of jaxseg's networks, built from the same jaxseg model configs.

Layer for layer as `jaxseg/models/` (U-Net valid and padded; FCN-32s/16s/8s on VGG16, reference
alignment), with parameter names that map onto the flax modules' paths (`flax_path`), so
jaxseg's weights load into them (tests/test_peer_torch.py proves the outputs equal) and jaxseg's
optimiser regexes apply to them. Used by benchmarks/peer_torch.py; needs the `[bench]` extra.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# --- Layers ------------------------------------------------------------------------------------


def crop(x: torch.Tensor, offset: int, height: int, width: int) -> torch.Tensor:
    """x[:, :, o:o+height, o:o+width] (Caffe's Crop layer), checking the window fits."""
    if offset + height > x.shape[2] or offset + width > x.shape[3]:
        raise ValueError(f"crop window {(offset, height, width)} exceeds feature map {x.shape}")
    return x[:, :, offset : offset + height, offset : offset + width]


def center_crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The centre [height, width] of x: [N, C, H, W] (offsets as jaxseg's `center_crop`)."""
    oh, ow = (x.shape[2] - height) // 2, (x.shape[3] - width) // 2
    return x[:, :, oh : oh + height, ow : ow + width]


def bilinear_kernel_1d(size: int) -> np.ndarray:
    """The FCN release's `upsample_filt` (= jaxseg.models.layers.bilinear_kernel_1d)."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    return (1 - np.abs(np.arange(size) - center) / factor).astype(np.float32)


def bilinear_upsample(channels: int, factor: int, learnable: bool) -> nn.ConvTranspose2d:
    """FCN's upsampling: a bias-free, unpadded ConvTranspose2d(k=2f, s=f) with bilinear weights.

    Frozen (learnable False, the release's lr_mult 0) it is per-channel (groups=channels) with
    requires_grad False, so it has no trainable parameters, like jaxseg's parameter-free map.
    Learnable, it is a full C x C kernel, bilinear on the diagonal, as jaxseg's nn.ConvTranspose.
    """
    k = 2 * factor
    kernel = torch.from_numpy(np.outer(bilinear_kernel_1d(k), bilinear_kernel_1d(k)))
    groups = 1 if learnable else channels
    deconv = nn.ConvTranspose2d(channels, channels, k, stride=factor, groups=groups, bias=False)
    with torch.no_grad():
        deconv.weight.zero_()  # [C_in, C_out / groups, k, k]
        for c in range(channels):
            deconv.weight[c, c if learnable else 0] = kernel
    deconv.weight.requires_grad_(learnable)
    return deconv


# --- U-Net (jaxseg/models/unet.py) -------------------------------------------------------------


class ConvBlock(nn.Module):
    """Two 3x3 convs, each followed by (optional BatchNorm and) ReLU."""

    def __init__(self, c_in: int, features: int, padding: int, use_batchnorm: bool):
        super().__init__()
        self.use_batchnorm = use_batchnorm
        for i, c in ((1, c_in), (2, features)):
            conv = nn.Conv2d(c, features, 3, padding=padding, bias=not use_batchnorm)
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")  # He init, as jaxseg
            self.add_module(f"conv{i}", conv)
            if use_batchnorm:
                # flax's defaults: momentum 0.99 (torch counts 1 - it), epsilon 1e-5.
                self.add_module(f"bn{i}", nn.BatchNorm2d(features, momentum=0.01))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in (1, 2):
            x = getattr(self, f"conv{i}")(x)
            if self.use_batchnorm:
                x = getattr(self, f"bn{i}")(x)
            x = self.relu(x)
        return x


def unet_output_size(n: int, depth: int) -> int:
    """Output side of a valid U-Net (572 -> 388); raises for sizes jaxseg rejects."""
    size = n
    for level in range(depth + 1):
        if level > 0:
            if size % 2:
                raise ValueError(f"input size {n}: a 2x2 max-pool at level {level} sees {size}")
            size //= 2
        size -= 4
        if size <= 0:
            raise ValueError(f"input size {n} is too small for a depth-{depth} valid U-Net")
    for _ in range(depth):
        size = 2 * size - 4
    return size


class UNet(nn.Module):
    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        base_width: int,
        depth: int,
        padding: str,
        use_batchnorm: bool,
        upsampling: str,
        dropout_rate: float,
    ):
        super().__init__()
        if padding not in ("VALID", "SAME"):
            raise ValueError(f"padding must be VALID or SAME, got {padding!r}")
        if upsampling not in ("transpose", "bilinear"):
            raise ValueError(f"upsampling must be transpose or bilinear, got {upsampling!r}")
        self.depth, self.padding, self.upsampling = depth, padding, upsampling
        pad = 0 if padding == "VALID" else 1
        width = lambda i: base_width * 2**i
        c = in_channels
        for i in range(depth):
            self.add_module(f"down{i + 1}", ConvBlock(c, width(i), pad, use_batchnorm))
            c = width(i)
        self.bottom = ConvBlock(c, width(depth), pad, use_batchnorm)
        self.dropout = nn.Dropout(dropout_rate)
        self.pool = nn.MaxPool2d(2, 2)
        for i in reversed(range(depth)):
            if upsampling == "transpose":
                up = nn.ConvTranspose2d(width(i + 1), width(i), 2, stride=2)
            else:
                # 1x1 conv first, then the resize: jaxseg's order (the same map, 1/4 the FLOPs).
                up = nn.Conv2d(width(i + 1), width(i), 1)
            self.add_module(f"upconv{i + 1}", up)
            self.add_module(f"up{i + 1}", ConvBlock(2 * width(i), width(i), pad, use_batchnorm))
        self.output = nn.Conv2d(base_width, num_classes, 1)

    def output_size(self, size: int) -> int:
        if self.padding == "SAME":
            if size % 2**self.depth:
                raise ValueError(
                    f"a padded U-Net of depth {self.depth} needs sides that are multiples of "
                    f"{2**self.depth}, got {size}"
                )
            return size
        return unet_output_size(size, self.depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i in range(self.depth):
            x = getattr(self, f"down{i + 1}")(x)
            skips.append(x)
            x = self.pool(x)
        x = self.dropout(self.bottom(x))
        for i in reversed(range(self.depth)):
            x = getattr(self, f"upconv{i + 1}")(x)
            if self.upsampling == "bilinear":
                x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            skip = center_crop(skips[i], x.shape[2], x.shape[3])
            x = getattr(self, f"up{i + 1}")(torch.cat([skip, x], dim=1))
        return self.output(x).float()


# --- FCN on VGG16 (jaxseg/models/fcn.py, vgg.py), reference alignment ---------------------------

VGG16_BLOCKS = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))


class VGG16(nn.Module):
    """VGG16 trunk, FCN reference release: conv1_1 padded by 100, ceil-mode pools, valid fc6."""

    def __init__(self, in_channels: int, dropout_rate: float):
        super().__init__()
        c = in_channels
        for block, (num_convs, channels) in enumerate(VGG16_BLOCKS, start=1):
            for i in range(1, num_convs + 1):
                pad = 100 if (block, i) == (1, 1) else 1
                self.add_module(f"conv{block}_{i}", nn.Conv2d(c, channels, 3, padding=pad))
                c = channels
        self.fc6 = nn.Conv2d(512, 4096, 7)
        self.fc7 = nn.Conv2d(4096, 4096, 1)
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout_rate)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = {}
        for block, (num_convs, _) in enumerate(VGG16_BLOCKS, start=1):
            for i in range(1, num_convs + 1):
                x = self.relu(getattr(self, f"conv{block}_{i}")(x))
            x = self.pool(x)
            features[f"pool{block}"] = x
        x = self.dropout(self.relu(self.fc6(x)))
        features["fc7"] = self.dropout(self.relu(self.fc7(x)))
        return features


class FCN(nn.Module):
    # Crop offsets of the reference release (voc-fcn{32,16,8}s/net.py).
    OFFSETS = {"score_pool4c": 5, "score_pool3c": 9, 32: 19, 16: 27, 8: 31}

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        output_stride: int,
        alignment: str,
        learnable_upsampling: bool,
        at_once: bool,
        dropout_rate: float,
    ):
        super().__init__()
        if alignment != "reference":
            raise NotImplementedError(
                f"the torch peer builds alignment 'reference' only, got {alignment!r}"
            )
        self.output_stride, self.at_once = output_stride, at_once
        self.backbone = VGG16(in_channels, dropout_rate)
        score = lambda c: nn.Conv2d(c, num_classes, 1)
        up = lambda f: bilinear_upsample(num_classes, f, learnable_upsampling)
        self.score_fr = score(4096)
        if output_stride == 32:
            self.upscore = up(32)
        else:
            self.upscore2, self.score_pool4 = up(2), score(512)
            if output_stride == 16:
                self.upscore16 = up(16)
            else:
                self.upscore_pool4, self.score_pool3, self.upscore8 = up(2), score(256), up(8)
        for name, m in self.named_children():
            if name.startswith("score"):  # zero-initialised, as in the reference release
                nn.init.zeros_(m.weight)
                nn.init.zeros_(m.bias)

    def output_size(self, size: int) -> int:
        return size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[2:]
        feats = self.backbone(x)
        score = self.score_fr(feats["fc7"])
        if self.output_stride == 32:
            up = self.upscore(score)
        else:
            up = self.upscore2(score)
            pool4 = feats["pool4"] * 0.01 if self.at_once else feats["pool4"]
            score_pool4 = crop(self.score_pool4(pool4), self.OFFSETS["score_pool4c"], *up.shape[2:])
            score = up + score_pool4
            if self.output_stride == 16:
                up = self.upscore16(score)
            else:
                up = self.upscore_pool4(score)
                pool3 = feats["pool3"] * 1e-4 if self.at_once else feats["pool3"]
                score_pool3 = crop(
                    self.score_pool3(pool3), self.OFFSETS["score_pool3c"], *up.shape[2:]
                )
                up = self.upscore8(up + score_pool3)
        return crop(up, self.OFFSETS[self.output_stride], height, width).float()


def build_model(model_cfg, in_channels: int) -> nn.Module:
    """The torch network of a jaxseg `config.model` for `in_channels`-channel images.

    Input [N, in_channels, H, W]; output float32 logits [N, num_classes, H', W'] (H' = H but for
    the valid U-Net, whose `output_size` gives H').
    """
    cfg = dict(model_cfg)
    name = cfg["name"]
    if name in ("unet", "unet_padded"):
        return UNet(
            in_channels=in_channels,
            num_classes=cfg["num_classes"],
            base_width=cfg["base_width"],
            depth=cfg["depth"],
            padding="VALID" if name == "unet" else "SAME",
            use_batchnorm=cfg["use_batchnorm"],
            upsampling=cfg["upsampling"],
            dropout_rate=cfg["dropout_rate"],
        )
    if name in ("fcn32s", "fcn16s", "fcn8s"):
        return FCN(
            in_channels=in_channels,
            num_classes=cfg["num_classes"],
            output_stride={"fcn32s": 32, "fcn16s": 16, "fcn8s": 8}[name],
            alignment=cfg.get("alignment", "reference"),
            learnable_upsampling=cfg.get("learnable_upsampling", False),
            at_once=cfg.get("at_once", False),
            dropout_rate=cfg.get("dropout_rate", 0.5),
        )
    raise ValueError(f"unknown model {name!r}")


# --- Parameter names ---------------------------------------------------------------------------


def flax_path(module: nn.Module, name: str) -> str:
    """A torch parameter name as jaxseg's '/'-joined flax path: down1.conv1.weight ->
    down1/conv1/kernel, down1.bn1.weight -> down1/bn1/scale, upscore2.weight -> upscore2/deconv/
    kernel."""
    *parents, leaf = name.split(".")
    owner = module.get_submodule(".".join(parents))
    if leaf == "weight":
        leaf = "scale" if isinstance(owner, nn.modules.batchnorm._BatchNorm) else "kernel"
    if isinstance(owner, nn.ConvTranspose2d) and owner.kernel_size[0] > 2:
        parents.append("deconv")  # FCN's BilinearUpsample wraps an nn.ConvTranspose "deconv"
    return "/".join([*parents, leaf])
