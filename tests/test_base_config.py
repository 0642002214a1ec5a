"""configs/base.py, the neutral base of every recipe, and the start-up checks of per-class settings.

The README's own-data command runs here as written (read from README.md, parsed by train.py's
flag parser), on a generated 11-class image folder, shortened only by `--config.*` overrides of
steps and sizes: with configs/base.py it trains; with configs/default.py (the synthetic scenes'
six class weights) it stops before the data set is built, naming `config.loss.class_weights`.
"""

import importlib
import json
import pathlib
import re
import shlex

import jax
import numpy as np
import pytest
from absl import flags
from jax.sharding import AxisType
from ml_collections import config_flags
from PIL import Image

from configs import base
from jaxseg import config_checks, train_lib
from jaxseg.data import datasets
from jaxseg.models import build_model

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted(
    p.stem for p in (REPO / "configs").glob("*.py") if "def get_config" in p.read_text()
)
README = (REPO / "README.md").read_text()
NUM_CLASSES = 11
# The tiny run: only steps and sizes change (STYLE 14a); 48 x 64 images, padded to 64 x 64.
TINY = {
    "total_steps": 2,
    "log_every_steps": 1,
    "eval_every_steps": 2,
    "checkpoint_every_steps": 2,
    "batch_size": 8,
    "eval_batch_size": 8,
    "model.base_width": 4,
    "model.depth": 2,
    "optim.warmup_steps": 0,
    "data.crop_size": "(32, 32)",
    "data.eval_pad_size": "(64, 64)",
}


def _own_data_command() -> list[str]:
    """argv of the README's own-data train command (the bash line with data.name=image_folder)."""
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            if "data.name=image_folder" in line and line.startswith("python train.py"):
                return shlex.split(line)
    raise AssertionError("README.md has no own-data train command (data.name=image_folder)")


def _load(argv: list[str]):
    """The locked config and the workdir train.py takes from `argv` (its flag definitions)."""
    values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "", flag_values=values, lock_config=True, sys_argv=argv
    )
    flags.DEFINE_string("workdir", None, "", flag_values=values)
    values(argv)
    return values.config, values.workdir


def _flag(argv: list[str], name: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")]
    return value


@pytest.fixture(scope="module")
def camvid_like(tmp_path_factory) -> pathlib.Path:
    """An 11-class folder as the README command expects it: index masks with CamVid's void id
    11, odd sizes (48 x 64 and 40 x 56), validation stems in val.txt."""
    root = tmp_path_factory.mktemp("camvid")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        h, w = (48, 64) if i % 2 else (40, 56)
        image = rng.integers(0, 256, (h, w, 3), np.uint8)
        mask = np.repeat(np.arange(w) * 12 // w, h).reshape(w, h).T.astype(np.uint8)  # 0..11
        Image.fromarray(image).save(root / "images" / f"f{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"f{i}.png")
    (root / "val.txt").write_text("f8\nf9\n")
    return root


def _own_data_argv(config_file: str, root: pathlib.Path, data_dir: pathlib.Path) -> list[str]:
    argv = _own_data_command()[1:]  # From train.py on.
    config_at = argv.index("--config") + 1
    assert argv[config_at] == "configs/base.py"
    argv[config_at] = str(REPO / config_file)
    folder = _flag(argv, "config.data.folder.root")
    argv = [a.replace(folder, str(root)) for a in argv]
    # Replaced in place, not repeated: absl joins a repeated tuple flag's values into one tuple.
    for key, value in {**TINY, "data.data_dir": data_dir}.items():
        flag = f"--config.{key}="
        argv = [a for a in argv if not a.startswith(flag)] + [f"{flag}{value}"]
    return argv


def test_readme_own_data_command_trains_from_the_base_config(camvid_like, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # The README's relative workdir, from a fresh directory.
    config, workdir = _load(_own_data_argv("configs/base.py", camvid_like, tmp_path / "tfds"))
    assert config.model.num_classes == len(config.data.folder.class_names) == NUM_CLASSES
    result = train_lib.train_and_evaluate(config, workdir)
    workdir = tmp_path / workdir
    # Scored on the validation stems, all 11 classes reported by the names the command gave.
    assert result["num_examples"] == 2
    assert list(result["per_class"]) == list(config.data.folder.class_names)
    records = [json.loads(ln) for ln in (workdir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r.get("split") == "train"]
    assert len(losses) == 2 and all(np.isfinite(losses))


def test_readme_own_data_command_with_default_stops_before_building_naming_the_weights(
    camvid_like, tmp_path
):
    data_dir = tmp_path / "tfds"
    config, _ = _load(_own_data_argv("configs/default.py", camvid_like, data_dir))
    with pytest.raises(ValueError, match=r"config\.loss\.class_weights has 6 values") as error:
        train_lib.train_and_evaluate(config, str(tmp_path / "run"))
    assert "class_weights=()" in str(error.value)  # and what to do
    assert not data_dir.exists()  # Nothing built, nothing compiled: stopped at start-up.


def _one_device_mesh():
    """The FCN recipes' batch 1 is for one accelerator: validate them on one device."""
    devices = np.array(jax.devices()[:1]).reshape(1, 1)
    return jax.sharding.Mesh(devices, ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2)


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_resolves_and_validates(name):
    config, _ = _load(["train.py", f"--config={REPO / 'configs' / name}.py"])
    spec = datasets.dataset_spec(config.data)
    config_checks.validate_config(config, _one_device_mesh(), spec)
    model = build_model(config.model)
    # Every model field is base.py's; the chosen family's are the module's attributes.
    assert set(config.model) == set(base.model_config())
    for key, value in config.model.items():
        if key not in ("name", "dtype") and hasattr(model, key):
            assert getattr(model, key) == value, (name, key)


def test_base_is_neutral():
    c = base.get_config()
    assert c.loss.class_weights == () and c.loss.dice_weight == 0.0
    assert not c.eval.flip and c.eval.scales == (1.0,)
    # Both papers' dropout, not the short synthetic recipe's 0 (the issue's EM run lost pixel
    # error 0.086 -> 0.109 when it inherited that 0).
    assert c.model.dropout_rate == 0.5
    assert not c.data.weight_map and not c.eval.isbi_metrics and c.data.folder.palette == ()
    # default.py is base.py plus exactly its recipe.
    d = importlib.import_module("configs.default").get_config()
    changed = {k for k, v in _flat(d.to_dict()).items() if _flat(c.to_dict())[k] != v}
    recipe = {"batch_size", "model.dropout_rate", "loss.class_weights", "loss.dice_weight"}
    budget = {"model.depth", "total_steps", "eval_every_steps"}  # a shallower net, more steps
    assert changed == recipe | budget | {"eval.flip"}


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out
