"""Benchmark tooling (no time is asserted): presets, the timing harness, the side-by-side table."""

import json
import sys

import jax
import jax.numpy as jnp
import pytest

from benchmarks import common, presets, side_by_side
from jaxseg.models import build_model


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_every_preset_builds_its_model(name):
    config = presets.load(name)
    model = build_model(config.model)
    size = 188 if config.model.name == "unet" else 64  # 188 is a valid U-Net input
    x = jnp.zeros((1, size, size, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    assert "params" in variables


def test_overrides_are_typed_and_unknown_keys_rejected():
    config = presets.load("unet_default", ["model.base_width=8", "model.dtype=bfloat16"])
    assert config.model.base_width == 8 and config.model.dtype == "bfloat16"
    assert presets.load("unet_paper").model.name == "unet_padded"
    with pytest.raises(KeyError, match="model.widht"):
        presets.load("unet_default", ["model.widht=8"])
    with pytest.raises(ValueError, match="unknown model"):
        presets.load("no_such_preset")


def test_time_repeats_calls_first_warmup_and_repeats():
    calls = []
    stats = common.time_repeats(lambda: calls.append(1), repeats=4)
    assert len(calls) == 1 + 1 + 4
    assert stats["step_s_min"] <= stats["step_s_median"] <= stats["step_s_max"]


def test_interleaved_summary_ratios_are_per_round_against_the_first_program():
    # Round 2 is slow for everyone (a loaded VM); each ratio is taken within its round.
    times = {"(as given)": [0.2, 0.6, 0.2], "model.depth=3": [0.1, 0.3, 0.1], "b": [0.4, 0.4, 0.4]}
    rows = common.interleaved_summary(times)
    assert [r["variant"] for r in rows] == list(times)
    assert rows[0]["vs_first"] == pytest.approx(1.0)
    assert rows[1]["vs_first"] == pytest.approx(2.0)
    assert rows[1]["step_s"] == pytest.approx(0.1) and rows[1]["min_s"] == pytest.approx(0.1)
    assert rows[2]["vs_first"] == pytest.approx(0.5)  # ratios 0.5, 1.5, 0.5


def test_side_by_side_table_ratios_and_shared_peak():
    base = dict(model="unet_paper", batch=4, dtype="float32", step_s_min=1.0, step_s_max=1.2)
    jax_row = dict(
        base,
        framework="jax 0.10.2",
        mode="jit",
        size="256x256",
        first_step_s=9.0,
        step_s_median=1.0,
        images_per_s=4.0,
        flops_per_image=1e9,
        peak_mem_mb=100.0,
        peak_gflops=10.0,
    )
    torch_row = dict(
        base,
        framework="torch 2.13.0",
        mode="eager",
        channels_last=True,
        size=256,
        first_step_s=2.0,
        step_s_median=2.0,
        images_per_s=2.0,
        flops_per_image=1e9,
        peak_mem_mb=200.0,
        peak_gflops=8.0,
    )
    lines = side_by_side.table([jax_row, torch_row]).splitlines()
    assert len(lines) == 4  # header, rule, one row each: "256" and "256x256" are one group
    # JAX: 4 img/s x 1 GFLOP = 4 GFLOP/s, 40% of the higher (10) peak; 2x PyTorch's speed.
    assert "| 4.0 | 40% of 10 |" in lines[2]
    assert "torch 2.13.0 eager channels_last" in lines[3] and lines[3].endswith("| 2.00x |")
    # Two JAX releases in one sitting: each torch row gets one ratio per release.
    newer = dict(jax_row, framework="jax 0.12.0.1", step_s_median=0.5, images_per_s=8.0)
    lines = side_by_side.table([jax_row, newer, torch_row]).splitlines()
    assert lines[-1].endswith("| 0.10.2: 2.00x, 0.12.0.1: 4.00x |")
    assert lines[2].endswith("|  |") and lines[3].endswith("|  |")


def test_pipeline_recipes_build_valid_configs(tmp_path):
    # Each recipe's config, its data written as users bring theirs (2 images): the benchmark
    # must run on the configs as they are (it once read a config function that was removed).
    from benchmarks import bench_pipeline

    for name, channels in (("isbi", 1), ("voc", 3), ("default", 3)):
        config, context = bench_pipeline._recipe(name, str(tmp_path), 2)
        assert len(config.data.mean) == len(config.data.std) == channels
        assert tuple(context) == ((92, 92) if name == "isbi" else (0, 0))  # valid U-Net: 92 px


@pytest.mark.parametrize("name", ["isbi", "voc"])
def test_train_loop_command_gives_train_py_the_recipe_config(tmp_path, name):
    # bench_train_loop runs train.py with the recipe's overrides as --config flags, and the step
    # alone with them as presets overrides: both must give the same config (tuples included).
    from absl import flags
    from ml_collections import config_flags

    from benchmarks import bench_pipeline, bench_train_loop

    path, overrides = bench_pipeline.write_recipe(name, str(tmp_path), 6)
    cmd = bench_train_loop.train_command(path, str(tmp_path / "run"), overrides, 40, 10)
    assert cmd[1:5] == ["train.py", "--config", path, "--workdir"]
    argv = cmd[1:]  # as train.py's absl app sees them
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "", flag_values=flag_values, lock_config=True, sys_argv=argv
    )
    flags.DEFINE_string("workdir", None, "", flag_values=flag_values)
    flag_values(argv)
    from_cli = flag_values.config
    expected = presets.load(path, overrides)
    expected.total_steps, expected.log_every_steps = 40, 10
    expected.eval_every_steps = expected.checkpoint_every_steps = 40
    assert from_cli.to_dict() == expected.to_dict()
    assert from_cli.data.folder.root == str(tmp_path / name)
    assert (from_cli.data.train_split, from_cli.data.eval_split) == ("train", "validation")
    if name == "voc":
        assert len(from_cli.data.folder.class_names) == 21 and from_cli.init_from == ""
    stems = (tmp_path / name / "val.txt").read_text().split()
    assert stems == ["0005"]  # the last sixth of 6 images: the validation split


def test_train_loop_rates_skip_the_first_window_and_evaluations(tmp_path):
    from benchmarks import bench_train_loop

    lines = [
        {"step": 10, "split": "train", "loss": 1.0, "images_per_sec": 3.0},  # warm-up window
        {"step": 20, "split": "train", "loss": 0.9, "images_per_sec": 8.0},
        {"step": 20, "split": "eval", "mean_iou": 0.5},
        {"step": 30, "split": "train", "loss": 0.8, "images_per_sec": 9.0},
    ]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert bench_train_loop.logged_rates(str(path)) == [8.0, 9.0]


def test_profile_reads_ops_from_a_trace_and_names_their_layers(tmp_path):
    from benchmarks import xla_profile

    def f(x, w):
        return jax.nn.relu(x @ w).sum()

    step = jax.jit(jax.grad(f, argnums=1))
    x, w = jnp.ones((64, 32)), jnp.ones((32, 16))
    compiled = step.lower(x, w).compile()
    compiled(x, w).block_until_ready()
    with jax.profiler.trace(str(tmp_path)):
        compiled(x, w).block_until_ready()
    (path,) = tmp_path.glob("**/*.xplane.pb")
    times = xla_profile.device_op_times(str(path))
    instructions = xla_profile.hlo_instructions(compiled.as_text())
    assert times and all(ns >= 0 for ns in times.values())
    assert set(times) <= set(instructions)  # every executed op is an instruction of the step
    ops = {instructions[name]["op_name"] for name in times}
    assert any(op.endswith("dot_general") for op in ops)
    assert (
        xla_profile.layer_of(
            "jit(train_step)/transpose(jvp(FCN))/backbone/conv1_1/conv_general_dilated"
        )
        == "backbone/conv1_1 (bwd)"
    )
    assert xla_profile.layer_of("jit(train_step)/jvp(UNet)/up1/conv1/add") == "up1/conv1"
    assert xla_profile.layer_of("jit(train_step)/add") == "add"


def test_default_run_runs_the_readme_command_with_only_the_workdir_replaced():
    from benchmarks import bench_default_run as bench

    readme = (bench.ROOT / "README.md").read_text()
    words = bench.readme_train_command(readme)
    cmd = bench.run_command(words, "/venv/bin/python", "/tmp/x/runs/default", ["total_steps=4"])
    assert cmd == [
        "/venv/bin/python", "train.py", "--config", "configs/default.py",
        "--workdir", "/tmp/x/runs/default", "--config.total_steps=4",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="python train.py"):
        bench.readme_train_command("# x\n\n```bash\npip install -e .\n```\n")


def test_default_run_measures_its_child_and_stops_it_at_the_timeout(tmp_path):
    from benchmarks import bench_default_run as bench

    log = str(tmp_path / "out")
    code = "import sys; x = bytearray(300_000_000); x[::4096] = b'1' * len(x[::4096]); sys.exit(3)"
    usage = bench.timed_run([sys.executable, "-c", code], None, log, timeout_s=60)
    assert usage["exit_code"] == 3
    assert usage["peak_rss_gb"] >= 0.3  # the child's 300 MB, not this process's
    assert usage["minor_page_faults"] >= 300_000_000 / 4096
    usage = bench.timed_run([sys.executable, "-c", "import time; time.sleep(60)"], None, log, 0.5)
    assert usage["exit_code"] == -15 and usage["wall_s"] < 30  # SIGTERM at the timeout


def test_default_run_reads_the_report_and_judges_the_promise(smoke_run):
    from benchmarks import bench_default_run as bench

    report = json.loads((smoke_run / "eval" / "report.json").read_text())
    row = bench.read_run(str(smoke_run))
    assert row["step"] == report["step"] == 6
    assert row["mean_iou"] == report["mean_iou"]
    assert row["class_iou"] == {k: c["iou"] for k, c in report["per_class"].items()}
    assert len(row["class_iou"]) == 6
    rates = [json.loads(line).get("images_per_sec") for line in open(smoke_run / "metrics.jsonl")]
    rates = [r for r in rates if r is not None]
    assert (row["images_per_s_min"], row["images_per_s_max"]) == (min(rates), max(rates))

    good = {"mean_iou": 0.76, "class_iou": {"purse": 0.31, "sky": None}, "wall_s": 395.0}
    assert bench.verdict(good, minutes=6, min_miou=0.75, min_class_iou=0.30) == {}
    bad = {"mean_iou": 0.7499, "class_iou": {"purse": 0.29, "plants": 0.6}, "wall_s": 397.0}
    assert list(bench.verdict(bad, minutes=6, min_miou=0.75, min_class_iou=0.30)) == [
        "wall", "mIoU", "purse",
    ]  # fmt: skip
    assert bench.clock(359.6) == "6:00" and bench.clock(65) == "1:05"
    usage = {"wall_s": 301, "user_s": 528, "system_s": 40, "minor_page_faults": 2.5e6}
    table = bench.table(
        [{"interpreter": "3.13.0, jax 0.12.0.1", **usage, "peak_rss_gb": 1.1, **row,
          "missed": {"mIoU": "..."}}]
    )  # fmt: skip
    head, rule, line = table.splitlines()
    assert head.split(" | ")[7:13] == list(row["class_iou"])
    assert line.startswith("| 3.13.0, jax 0.12.0.1 | **5:01** | 528 | 40 | 2.5 M |")
    assert line.endswith("| 1.10 GB | missed: mIoU |")
