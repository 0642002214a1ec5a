r"""PyTorch peer of the train-step benchmark: the same networks, step and timing as jaxseg's.

  python -m benchmarks.peer_torch --model unet_paper --size 256 --batch 4 --mode eager
  python -m benchmarks.peer_torch --model unet_paper --size 256 --batch 4 --mode compile \
      --dtype bfloat16
  python -m benchmarks.peer_torch --model fcn8s --size 512 --batch 1 --no-channels-last --peak
  python -m benchmarks.peer_torch --model configs/default.py --size 64 --batch 1 --repeats 1 \
      --override model.base_width=8

--model is a preset of `benchmarks/presets.py` (or a config file); the network, optimiser and
loss are rebuilt in torch from that jaxseg config, layer for layer (parameter names follow the
flax modules', so `optim.lr_multipliers` / `optim.frozen` regexes and the weight-decay mask apply
as in `jaxseg.optim`). One step = zero_grad, forward (under bf16 autocast for --dtype bfloat16),
cross-entropy, backward, optional clipping, optimiser step, model in train mode. The first step
is timed on its own (it includes torch.compile's compilation), then one warm-up step, then
--repeats timed steps. FLOPs come from torch's FlopCounterMode over one eager step. Prints a
human-readable line and `RESULT {json}` for drivers. torch is an optional extra
(`pip install -e .[bench]`) and is imported only here; jax is not imported at all.

Inductor caches compiled graphs across processes (/tmp/torchinductor_$USER): a --mode compile
first_step_s is a cold compile only with a fresh TORCHINDUCTOR_CACHE_DIR.
"""

import argparse
import re
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import common
from benchmarks.presets import load

IGNORE_LABEL = 255
# jaxseg.optim's norm-module pattern: no weight decay inside these modules.
_NORM_MODULE = re.compile(r"norm|(?<![a-z])bn(?![a-z])")


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


# --- Optimiser (jaxseg/optim.py) ---------------------------------------------------------------


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


def make_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    """jaxseg's optimiser as torch parameter groups: decay mask, lr multipliers, frozen regexes.

    Frozen parameters get requires_grad False (jaxseg zeroes their update and XLA drops their
    gradients). Schedules are ignored (constant lr: irrelevant to timing). SGD has no decoupled
    weight decay in torch: "sgd" with weight_decay_mode "decoupled" runs without decay.
    """
    frozen = [re.compile(p) for p in cfg.frozen]
    multipliers = [(re.compile(p), float(f)) for p, f in cfg.lr_multipliers]
    coupled = cfg.weight_decay_mode == "coupled"
    wd = float(cfg.weight_decay)
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        path = flax_path(model, name)
        if any(f.search(path) for f in frozen):
            p.requires_grad_(False)
            continue
        mult = next((f for pattern, f in multipliers if pattern.search(path)), 1.0)
        *modules, leaf = path.split("/")
        decays = leaf not in ("bias", "scale") and not any(
            _NORM_MODULE.search(m.lower()) for m in modules
        )
        groups.setdefault((decays, mult), []).append(p)
    lr = float(cfg.learning_rate)
    param_groups = [
        {"params": ps, "lr": lr * mult, "weight_decay": wd if decays else 0.0}
        for (decays, mult), ps in groups.items()
    ]
    if cfg.optimizer == "sgd":
        if not coupled:
            for g in param_groups:
                g["weight_decay"] = 0.0
        return torch.optim.SGD(
            param_groups, lr=lr, momentum=float(cfg.momentum), nesterov=bool(cfg.nesterov)
        )
    if cfg.optimizer == "adamw":
        opt = torch.optim.Adam if coupled else torch.optim.AdamW
        return opt(param_groups, lr=lr, betas=(float(cfg.b1), float(cfg.b2)), eps=float(cfg.eps))
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


# --- Benchmark ---------------------------------------------------------------------------------


def matmul_peak(device: torch.device, sync, dtype: torch.dtype, n: int = 2048) -> float:
    """Median-of-5 GFLOP/s of an n x n x n matmul in `dtype`.

    If the warm-up matmul takes over 5 s (bfloat16 on CPUs without AVX512-BF16/AMX runs at
    ~0.2 GFLOP/s: over a minute per 2048 matmul), that one call is reported instead.
    """
    a = torch.randn(n, n, device=device, dtype=dtype)
    sync()
    t0 = time.perf_counter()
    torch.mm(a, a)
    sync()
    first = time.perf_counter() - t0
    if first > 5.0:
        return 2 * n**3 / first / 1e9

    def blocking_mm():
        torch.mm(a, a)
        sync()

    return 2 * n**3 / common.time_repeats(blocking_mm, 5)["step_s_median"] / 1e9


def main():
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.peer_torch", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--model", default="unet_paper", help="preset of benchmarks/presets.py")
    parser.add_argument("--size", type=int, default=256, help="square input side, px")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--mode", choices=("eager", "compile"), default="eager")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--channels", type=int, default=3, help="input channels")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--peak", action="store_true", help="also measure the matmul peak")
    parser.add_argument(
        "--override", action="append", default=[], help="config override key=value, repeatable"
    )
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    config = load(args.model, args.override)
    dtype = args.dtype or config.model.get("dtype", "float32")
    if config.loss.get("dice_weight", 0.0):
        raise NotImplementedError("the torch peer has no Dice loss (config.loss.dice_weight > 0)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        # cudnn already allows TF32 convs by default; let matmuls use it too, and autotune.
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
        sync = torch.cuda.synchronize
    else:
        sync = lambda: None

    torch.manual_seed(0)
    model = build_model(config.model, args.channels)
    out_size = model.output_size(args.size)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(device=device, memory_format=memory_format).train()
    optimizer = make_optimizer(model, config.optim)
    trainable = [p for p in model.parameters() if p.requires_grad]
    params = sum(p.numel() for p in trainable)

    # The JAX benchmark's data (same generator, same draws), NHWC -> NCHW.
    rng = np.random.default_rng(0)
    images = rng.normal(size=(args.batch, args.size, args.size, args.channels)).astype(np.float32)
    labels = rng.integers(0, config.model.num_classes, (args.batch, args.size, args.size))
    images = torch.from_numpy(images).permute(0, 3, 1, 2).to(device, memory_format=memory_format)
    labels = torch.from_numpy(labels).to(device=device, dtype=torch.int64)
    off = (args.size - out_size) // 2  # a valid U-Net scores the centre of its input
    labels = labels[:, off : off + out_size, off : off + out_size].contiguous()

    class_weights = tuple(config.loss.class_weights)
    class_weights = torch.tensor(class_weights, device=device) if class_weights else None
    normalize = bool(config.loss.normalize)
    clip = float(config.optim.grad_clip_norm)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

    def loss_fn(net):
        with autocast:
            logits = net(images)
        loss = F.cross_entropy(
            logits.float(),
            labels,
            weight=class_weights,
            ignore_index=IGNORE_LABEL,
            reduction="mean" if normalize else "sum",
        )
        return (loss if normalize else loss / args.batch), logits

    # FLOPs of one eager step (no optimiser), forward alone and forward + backward.
    with FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            _, logits = loss_fn(model)
    flops_fwd = counter.get_total_flops() / args.batch
    with FlopCounterMode(display=False) as counter:
        loss, logits = loss_fn(model)
        loss.backward()
    flops = counter.get_total_flops() / args.batch
    optimizer.zero_grad(set_to_none=True)
    if tuple(logits.shape) != (args.batch, config.model.num_classes, *labels.shape[1:]):
        raise AssertionError(f"logits {tuple(logits.shape)} do not match labels {labels.shape}")
    del logits, loss

    net = torch.compile(model) if args.mode == "compile" else model

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss, _ = loss_fn(net)
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(trainable, clip)
        optimizer.step()
        return loss

    def blocking_step():
        step()
        sync()

    stats = common.time_repeats(blocking_step, args.repeats)
    first_step_s, med = stats["first_step_s"], stats["step_s_median"]

    if device.type == "cuda":
        peak_mem_mb = torch.cuda.max_memory_allocated() / 2**20
        device_name = f"cuda ({torch.cuda.get_device_name()})"
    else:
        peak_mem_mb = common.peak_rss_mb()
        device_name = "cpu"
    result = {
        "framework": f"torch {torch.__version__}",
        "model": args.model,
        "size": args.size,
        "batch": args.batch,
        "dtype": dtype,
        "mode": args.mode,
        "channels_last": args.channels_last,
        "device": device_name,
        "threads": torch.get_num_threads(),
        "params": params,
        **stats,
        "images_per_s": args.batch / med,
        "flops_per_image": flops,
        "flops_per_image_fwd": flops_fwd,
        "peak_mem_mb": peak_mem_mb,
    }
    peak_text = ""
    if args.peak:
        result["peak_gflops"] = matmul_peak(device, sync, getattr(torch, dtype))
        peak_text = f" peak_gflops={result['peak_gflops']:.1f}"
    common.emit(
        result,
        f"framework=torch-{torch.__version__} device={device_name} threads={result['threads']} "
        f"model={args.model} ({config.model.name}) params={params:,} size={args.size} "
        f"out={out_size}x{out_size} batch={args.batch} dtype={dtype} mode={args.mode} "
        f"channels_last={args.channels_last} first_step_s={first_step_s:.1f} "
        f"step_s_median={med:.3f} step_s_min={stats['step_s_min']:.3f} "
        f"step_s_max={stats['step_s_max']:.3f} "
        f"images_per_s={args.batch / med:.2f} gflop_per_image={flops / 1e9:.1f} "
        f"(fwd {flops_fwd / 1e9:.1f}) peak_mem_mb={peak_mem_mb:.0f}{peak_text}",
    )


if __name__ == "__main__":
    main()
