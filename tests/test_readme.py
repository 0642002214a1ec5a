"""The README's commands, run as written: a newcomer's first try must work.

The test reads README.md itself. From the first bash block it takes the train command (the part
of the first line after `pip install ... &&`) and from "Everyday commands" the eval.py and
predict.py lines, and runs them in subprocesses with their own relative paths (`runs/default`,
`my_images/`, `masks/`), from a scratch folder laid out like the repo root (links to train.py,
eval.py, predict.py, configs/ and jaxseg/), so a developer's own runs/ is never touched. The only
change to a command is a few `--config.*` duration and data-size overrides appended to the train
command. If the README changes, the test follows it; if a README command stops working, the test
fails.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, child_env, shared_dir, tensorflow_blocker
from PIL import Image

from jaxseg import train_lib

# Durations and sizes only: a few steps, an evaluation and a checkpoint at each half, and the
# default data set with fewer images (an evaluation of all 300 took ~10 s on 8 CPU devices).
STEPS = 4
SHORTEN = [
    "--config.data.synthetic.num_train=64",
    "--config.data.synthetic.num_validation=24",
    f"--config.total_steps={STEPS}",
    f"--config.eval_every_steps={STEPS // 2}",
    f"--config.checkpoint_every_steps={STEPS // 2}",
    "--config.log_every_steps=1",
    "--config.optim.warmup_steps=0",
]
TIMEOUT_S = 600
ROOT_ENTRIES = ("train.py", "eval.py", "predict.py", "configs", "jaxseg", "README.md")


def _bash_blocks(text: str) -> list[list[str]]:
    """The README's ```bash blocks, each a list of its non-empty lines."""
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return [[ln.strip() for ln in b.splitlines() if ln.strip()] for b in blocks]


def _section(text: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert match, f"README.md has no '## {title}' section"
    return match.group(1)


def _command(line: str) -> list[str]:
    """argv of one README line: shell words, trailing `# comment` dropped."""
    return shlex.split(line, comments=True)


README = (REPO / "README.md").read_text()
FIRST_BLOCK = _bash_blocks(README)[0]
EVERYDAY = [_command(ln) for ln in _bash_blocks(_section(README, "Everyday commands"))[0]]


def _python_command(words: list[str], script: str) -> list[str]:
    assert words[:2] == ["python", script], words
    return [sys.executable, *words[1:]]


def _train_command() -> list[str]:
    """The first line's train command: `pip install -e ".[test]" && python train.py ...`."""
    install, train = (part.strip() for part in FIRST_BLOCK[0].split("&&"))
    assert _command(install)[:3] == ["pip", "install", "-e"]
    return _python_command(_command(train), "train.py")


def _everyday(script: str) -> list[str]:
    (words,) = [w for w in EVERYDAY if w[:2] == ["python", script]]
    return _python_command(words, script)


def _flag(argv: list[str], name: str) -> str:
    """Value of `--name value` or `--name=value` in argv."""
    for i, word in enumerate(argv):
        if word == f"--{name}":
            return argv[i + 1]
        if word.startswith(f"--{name}="):
            return word.split("=", 1)[1]
    raise AssertionError(f"no --{name} in {argv}")


def test_first_block_installs_the_test_extra_and_ci_runs_its_test_command():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    install = _command(FIRST_BLOCK[0].split("&&")[0])
    (target,) = [w for w in install if w.startswith(".[")]
    for extra in target[2:-1].split(","):
        assert extra in extras["optional-dependencies"], extra
    assert FIRST_BLOCK[1] == "python -m pytest -q"
    ci = (REPO / ".ci" / "run").read_text()
    # The newest job installs exactly the README's extras (no TensorFlow) and runs its command.
    (newest,) = [ln for ln in ci.splitlines() if ln.startswith("job newest ")]
    assert newest.endswith(f'" {target[2:-1]} "" {FIRST_BLOCK[1]}'), newest
    assert 'pip install --quiet -e ".[$extras]"' in ci


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    """The children's environment: a newcomer's machine, one CPU device (the e2e tests run 8),
    the e2e tests' shared tfds data dir and XLA cache, and no TensorFlow (importing it raises):
    train, eval and predict never need it."""
    blocker = tensorflow_blocker(tmp_path_factory.mktemp("readme_env"))
    return child_env(
        shared_dir(tmp_path_factory), 1, PYTHONPATH=os.pathsep.join([blocker, str(REPO)])
    )


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A scratch folder laid out like the repo root."""
    root = tmp_path_factory.mktemp("readme_root")
    for name in ROOT_ENTRIES:
        (root / name).symlink_to(REPO / name)
    return root


def _run(root: Path, env: dict[str, str], argv: list[str], name: str) -> tuple[int, str]:
    """(exit code, output) of `argv` run in `root`."""
    log = root / f"{name}.log"
    with open(log, "wb") as f:
        proc = subprocess.run(
            argv, cwd=root, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=TIMEOUT_S
        )
    return proc.returncode, log.read_text(errors="replace")


@pytest.fixture(scope="module")
def trained(root, env):
    """Runs the README's train command (stopped halfway once, then rerun: it must resume)."""
    argv = _train_command() + SHORTEN
    workdir = _flag(argv, "workdir")
    assert not Path(workdir).is_absolute(), "the README's train command uses a relative workdir"
    rc, first = _run(root, env, argv + [f"--config.max_steps_per_run={STEPS // 2}"], "train1")
    assert rc == train_lib.EXIT_STOPPED_EARLY, first[-3000:]
    rc, second = _run(root, env, argv, "train2")
    assert rc == 0, second[-3000:]
    return root / workdir, first, second


@pytest.mark.slow
def test_readme_train_command_runs_resumes_and_reports(trained):
    workdir, first, second = trained
    assert "Stopping early" in first
    assert re.search(rf"Resumed from step {STEPS // 2} in", second), second[-3000:]
    ckpts = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert ckpts[-1] == STEPS
    config = json.loads((workdir / "config.json").read_text())
    assert config["total_steps"] == STEPS and config["model"]["name"]

    # Each (step, split) logged once, in order, across the stop and the resume.
    records = [json.loads(ln) for ln in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == list(range(1, STEPS + 1))
    evals = [r for r in records if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [STEPS // 2, STEPS]

    report = json.loads((workdir / "eval" / "report.json").read_text())
    assert report["step"] == STEPS and report["mean_iou"] == pytest.approx(evals[-1]["mean_iou"])
    # The first command's visual report, and a printed pointer to it.
    figures = [workdir / "eval" / f for f in ("confusion_matrix.png", "predictions.png")]
    figures.append(workdir / "eval" / "curves.png")
    for path in figures:
        with Image.open(path) as im:
            assert im.size[0] > 300 and np.asarray(im.convert("L")).std() > 0, path
    printed = [ln for ln in second.splitlines() if ln.startswith("Final validation mIoU")]
    assert printed and all(str(Path(*p.parts[-3:])) in printed[-1] for p in figures), printed


def _absl_info_sources(output: str) -> set[str]:
    """The files that logged the absl-formatted INFO lines ("I1203 13:47:24.1 123 file.py:45] ")."""
    return set(re.findall(r"^I\d{4} [\d:.]+ +\d+ ([\w.]+):\d+\]", output, flags=re.M))


@pytest.mark.slow
def test_console_keeps_jaxseg_lines_and_sends_library_chatter_to_train_log(trained):
    workdir, first, second = trained
    ours = {p.name for p in (REPO / "jaxseg").rglob("*.py")} | {"train.py"}
    for output in (first, second):
        sources = _absl_info_sources(output)
        assert sources and sources <= ours, sources - ours
        assert "Closing _NonBlockingMetadataStore" not in output
        assert "Given directory is read only" not in output  # orbax's, on evaluation's read
        # jaxseg's own lines only (config, devices, resume, first step, evals, the report): the
        # first command printed 126 library INFO lines before the progress bar.
        assert len(re.findall(r"^I\d{4} ", output, flags=re.M)) < 20, output
    config_line = [ln for ln in second.splitlines() if "] Config: " in ln]
    assert config_line and str(Path(workdir.name, "config.json")) in config_line[0], config_line
    # Nothing is lost: the libraries' lines (orbax's checkpoint manager) are in the log file.
    log = (workdir / "train.log").read_text()
    assert "orbax" in log.lower()
    assert "Given directory is read only" in log  # kept off the console, not lost
    assert "Resumed from step" in log  # jaxseg's own lines are there too


@pytest.mark.slow
def test_tensorboard_gets_the_prediction_grid_at_every_evaluation(trained):
    """Read as TensorBoard reads it (its event accumulator; no TensorFlow needed)."""
    import io

    from tensorboard.backend.event_processing import plugin_event_accumulator as pea
    from tensorboard.util import tensor_util

    workdir = trained[0]
    acc = pea.EventAccumulator(
        str(workdir / "tensorboard" / "eval"), size_guidance={pea.TENSORS: 0}
    )
    acc.Reload()
    images = {e.step: tensor_util.make_ndarray(e.tensor_proto) for e in acc.Tensors("predictions")}
    assert sorted(images) == [STEPS // 2, STEPS]
    width, height, png = images[STEPS][:3]  # tf.summary.image's layout: [width, height, *PNGs]
    picture = np.asarray(Image.open(io.BytesIO(png)))
    assert picture.shape == (int(height), int(width), 3) and picture.std() > 0


@pytest.mark.slow
def test_readme_eval_command_reproduces_the_training_evaluation(trained, env):
    workdir, _, _ = trained
    root = workdir.parents[1]
    argv = _everyday("eval.py")
    assert _flag(argv, "workdir") == str(workdir.relative_to(root))
    rc, log = _run(root, env, argv, "eval")
    assert rc == 0, log[-3000:]
    printed = json.loads([ln for ln in log.splitlines() if ln.startswith("{")][-1])
    report = json.loads((workdir / "eval" / "report.json").read_text())
    # The checkpoint eval.py picked, evaluated again, gives what training logged at that step.
    logged = {
        r["step"]: r
        for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
        if r["split"] == "eval"
    }
    assert report["checkpoint"] == _flag(argv, "checkpoint")
    assert report["mean_iou"] == pytest.approx(logged[report["step"]]["mean_iou"], abs=1e-6)
    assert printed["mean_iou"] == round(report["mean_iou"], 4)
    assert printed["num_examples"] == report["num_examples"] > 0
    assert "eval: 100%" in log  # the evaluation progress bar ran to the end


@pytest.mark.slow
def test_readme_predict_command_writes_masks_for_a_users_folder(trained, env):
    workdir, _, _ = trained
    root = workdir.parents[1]
    argv = _everyday("predict.py")
    inputs, output = root / _flag(argv, "input"), root / _flag(argv, "output")
    # A user's photos: odd sizes, one greyscale, one JPEG.
    rng = np.random.default_rng(0)
    inputs.mkdir()
    shapes = {"street.png": (75, 101, 3), "grey.png": (64, 64), "photo.jpg": (130, 96, 3)}
    for name, shape in shapes.items():
        Image.fromarray(rng.integers(0, 256, shape, np.uint8)).save(inputs / name)
    rc, log = _run(root, env, argv, "predict")
    assert rc == 0, log[-3000:]
    num_classes = json.loads((workdir / "config.json").read_text())["model"]["num_classes"]
    for name, shape in shapes.items():
        stem = Path(name).stem
        with Image.open(output / f"{stem}.png") as mask:
            assert mask.mode == "P" and mask.size == (shape[1], shape[0])
            assert np.asarray(mask).max() < num_classes
        if "--overlay" in argv:
            with Image.open(output / f"{stem}_overlay.png") as over:
                assert over.size == (shape[1], shape[0]) and over.mode == "RGB"
