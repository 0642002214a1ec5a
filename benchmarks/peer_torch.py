r"""PyTorch peer of the train-step benchmark: the same networks, step and timing as jaxseg's.

  python -m benchmarks.peer_torch --model unet_paper --size 256 --batch 4 --mode eager
  python -m benchmarks.peer_torch --model unet_paper --size 256 --batch 4 --mode compile \
      --dtype bfloat16
  python -m benchmarks.peer_torch --model fcn8s --size 512 --batch 1 --no-channels-last --peak
  python -m benchmarks.peer_torch --model configs/default.py --size 64 --batch 1 --repeats 1 \
      --override model.base_width=8 --override loss.dice_weight=0.0   # no Dice loss in torch

--model is a preset of `benchmarks/presets.py` (or a config file); the network, optimiser and
loss are rebuilt in torch from that jaxseg config, the network layer for layer in
`benchmarks/torch_models.py` (parameter names follow the flax modules', so
`optim.lr_multipliers` / `optim.frozen` regexes and the weight-decay mask apply as in
`jaxseg.optim`). One step = zero_grad, forward (under bf16 autocast for --dtype bfloat16),
cross-entropy, backward, optional clipping, optimiser step, model in train mode. The first step
is timed on its own (it includes torch.compile's compilation), then one warm-up step, then
--repeats timed steps. FLOPs come from torch's FlopCounterMode over one eager step. Prints a
human-readable line and `RESULT {json}` for drivers. torch is an optional extra
(`pip install -e .[bench]`) imported only here and in torch_models.py; jax is not imported.

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

from benchmarks import common, torch_models
from benchmarks.presets import load
from jaxseg.labels import IGNORE_ID

# jaxseg.optim's norm-module pattern: no weight decay inside these modules.
_NORM_MODULE = re.compile(r"norm|(?<![a-z])bn(?![a-z])")


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
        path = torch_models.flax_path(model, name)
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
    model = torch_models.build_model(config.model, args.channels)
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
            ignore_index=IGNORE_ID,
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
