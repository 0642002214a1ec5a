"""jaxseg/workdir.py: the run directory's layout and readers, the training lock (exclusive,
names its holder, stale locks taken over), and a training run whose workdir is gs://."""

import json
import os
import socket
import subprocess
import sys

import fsspec
import ml_collections
import numpy as np
import pytest
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem
from tensorboard.backend.event_processing import plugin_event_accumulator
from tensorboard.util import tensor_util

from jaxseg import workdir as workdir_lib


def test_second_writer_is_refused_naming_the_holder(tmp_path):
    with workdir_lib.TrainLock(tmp_path) as lock:
        holder = json.loads(open(lock.path).read())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(workdir_lib.WorkdirLockedError) as error:
            workdir_lib.TrainLock(tmp_path).acquire()
        message = str(error.value)
        assert f"pid {os.getpid()} on host {socket.gethostname()}" in message
        assert lock.path in message
    assert not os.path.exists(lock.path)  # Released on exit.
    with workdir_lib.TrainLock(tmp_path):  # Free again.
        pass


def test_lock_is_released_when_the_run_raises(tmp_path):
    with pytest.raises(RuntimeError, match="boom"), workdir_lib.TrainLock(tmp_path):
        raise RuntimeError("boom")
    assert not (tmp_path / workdir_lib.LOCK_FILENAME).exists()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    # A real pid that has exited (a killed run leaves its lock behind).
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    pid = int(dead.stdout)
    path = tmp_path / workdir_lib.LOCK_FILENAME
    path.write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": 0}))
    with workdir_lib.TrainLock(tmp_path) as lock:
        assert json.loads(open(lock.path).read())["pid"] == os.getpid()
    path.write_text("")  # Died between creating and writing the file.
    with workdir_lib.TrainLock(tmp_path):
        pass


def test_lock_held_on_another_host_is_refused(tmp_path):
    path = tmp_path / workdir_lib.LOCK_FILENAME
    path.write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": 0}))
    with pytest.raises(workdir_lib.WorkdirLockedError, match="pid 1 on host elsewhere"):
        workdir_lib.TrainLock(tmp_path).acquire()
    assert path.exists()  # Not ours to remove.


def test_write_and_read_config(tmp_path):
    config = ml_collections.ConfigDict(
        {"model": {"name": "fcn8s"}, "optim": {"lr": 1e-4, "boundaries": (10, 20)}, "seed": 0}
    )
    path = workdir_lib.write_config(tmp_path, config)
    assert path == tmp_path / "config.json"
    assert json.loads(path.read_text())["optim"] == {"lr": 1e-4, "boundaries": [10, 20]}
    loaded = workdir_lib.read_config(tmp_path)
    assert loaded.model.name == "fcn8s" and loaded.optim.lr == 1e-4
    assert list(loaded.optim.boundaries) == [10, 20]

    # Resuming with the same config: nothing to keep.
    workdir_lib.write_config(tmp_path, config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]

    # Resuming with a changed config: the old one is kept beside the new one.
    config.optim.lr = 3e-4
    workdir_lib.write_config(tmp_path, config)
    backups = sorted(tmp_path.glob("config.*.json"))
    assert len(backups) == 1
    assert json.loads(backups[0].read_text())["optim"]["lr"] == 1e-4
    assert workdir_lib.read_config(tmp_path).optim.lr == 3e-4
    config.optim.lr = 5e-4
    workdir_lib.write_config(tmp_path, config)  # Second change within the same second.
    assert len(sorted(tmp_path.glob("config.*.json"))) == 2


def test_config_changes_name_each_differing_key(tmp_path, caplog):
    old = ml_collections.ConfigDict(
        {"model": {"base_width": 4, "depth": 2}, "data": {"crop_size": (32, 32)}, "seed": 0}
    )
    new = ml_collections.ConfigDict(
        {"model": {"base_width": 8, "depth": 2}, "data": {"crop_size": [32, 32]}, "lr": 0.1}
    )
    changes = workdir_lib.config_changes(old, new)
    # A tuple equals its list (config.json's form); changed, added and removed keys, sorted.
    assert [str(c) for c in changes] == [
        "config.lr: (absent) -> 0.1",
        "config.model.base_width: 4 -> 8",
        "config.seed: 0 -> (absent)",
    ]
    # config.json's dict and a ConfigDict compare alike; equal configs have no changes.
    workdir_lib.write_config(tmp_path, old)
    assert workdir_lib.config_changes(json.loads((tmp_path / "config.json").read_text()), old) == []
    # The resume that keeps an older config aside says what changed.
    with caplog.at_level("WARNING"):
        workdir_lib.write_config(tmp_path, new)
    assert "config.model.base_width: 4 -> 8" in caplog.text, caplog.text


def test_read_config_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"No config.json in {tmp_path}"):
        workdir_lib.read_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        workdir_lib.read_config(tmp_path)


def test_read_metrics_skips_a_torn_last_line_and_names_any_other_bad_one(tmp_path):
    run = workdir_lib.RunDir(tmp_path)
    with pytest.raises(FileNotFoundError, match="metrics.jsonl: train first"):
        run.read_metrics()
    assert run.read_metrics(missing_ok=True) == [] and run.latest_logged_step() == 0
    good = '{"step": 1, "split": "train", "loss": 1.0}\n{"step": 2, "split": "eval"}\n'
    run.metrics_jsonl.write_text(good + '{"step": 3, "spl')  # A kill mid-write.
    assert [r["step"] for r in run.read_metrics()] == [1, 2]
    assert run.latest_logged_step() == 2
    run.metrics_jsonl.write_text('{"step": 1, "split": "train", "loss": 1.0}\n{"step": 2,\n{}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2 is not valid JSON"):
        run.read_metrics()


def test_run_dir_names_every_file_of_the_layout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = workdir_lib.RunDir("runs/x")
    assert run.path == tmp_path / "runs" / "x"  # Made absolute: orbax needs it.
    names = {
        "config_json": "config.json",
        "checkpoints": "checkpoints",
        "corrupt_checkpoints": "corrupt_checkpoints",
        "metrics_jsonl": "metrics.jsonl",
        "tensorboard": "tensorboard",
        "eval_dir": "eval",
        "report_json": "eval/report.json",
        "run_info_json": "run_info.json",
        "lock_file": "train.lock",
    }
    for attribute, name in names.items():
        assert getattr(run, attribute) == run.path / name, attribute
    assert run.log_file(0) == run.path / "train.log"
    assert run.log_file(3) == run.path / "train.process3.log"
    remote = workdir_lib.RunDir("gs://bucket/run")
    assert os.fspath(remote.metrics_jsonl) == "gs://bucket/run/metrics.jsonl"
    assert remote.is_remote and remote.log_file(0) is None


class _FakeGCS(DirFileSystem):
    """fsspec's gs:// served from a local folder (`ROOT`/<bucket>/...), refusing appends as an
    object store does. etils.epath's fsspec backend asks fsspec for "gcs" (gcsfs, absent here)."""

    protocol = ("gs", "gcs")
    ROOT = ""

    def __init__(self, *args, **kwargs):  # epath passes gcsfs's finalize_on_close=True.
        super().__init__(path=self.ROOT, fs=LocalFileSystem())

    def open(self, path, mode="rb", *args, **kwargs):
        if "a" in mode:
            raise NotImplementedError(f"object stores have no append ({path})")
        return super().open(path, mode, *args, **kwargs)


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch):
    """gs://<bucket>/... lives under the returned local folder, for epath, orbax and tensorstore.

    Faked, and so not covered: the GCS service itself. epath is sent to its fsspec backend
    (where TensorFlow is installed it would use tf.io.gfile, which talks to real GCS) and fsspec's
    "gcs" protocol to `_FakeGCS`. orbax writes a gs:// checkpoint's arrays through tensorstore's
    "gcs" kvstore driver (network only, no fsspec), so `get_kvstore_for_gcs` is pointed at the
    same folder with the "file" driver, and orbax's probe for a hierarchical-namespace bucket
    (google-cloud-storage, network) answers no. Everything else of orbax's GCS path is real: its
    checkpoint directories, the commit-file atomicity it uses on GCS instead of renames.
    """
    from etils.epath import backend, gpath
    from orbax.checkpoint._src.path import gcs_utils

    root = tmp_path / "gcs"
    root.mkdir()
    monkeypatch.setattr(_FakeGCS, "ROOT", str(root))
    fsspec.register_implementation("gcs", _FakeGCS, clobber=True)
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
    monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)

    def kvstore(path):
        bucket, key = gcs_utils.parse_gcs_path(path, add_trailing_slash=False)
        return {"driver": "file", "path": str(root / bucket / key)}

    monkeypatch.setattr(gcs_utils, "get_kvstore_for_gcs", kvstore)
    _FakeGCS.clear_instance_cache()
    backend.fsspec_backend._get_filesystem.cache_clear()
    yield root
    fsspec.register_implementation("gcs", "gcsfs.GCSFileSystem", clobber=True)  # fsspec's own
    _FakeGCS.clear_instance_cache()
    backend.fsspec_backend._get_filesystem.cache_clear()


def test_a_gs_workdir_gets_every_artefact_and_resumes_from_it(fake_gcs, tmp_path, monkeypatch):
    from configs import smoke
    from jaxseg import checkpointing, train_lib

    monkeypatch.chdir(tmp_path)  # A file opened with open("gs://...") would land in ./gs:
    workdir = "gs://bucket/runs/smoke"
    local = fake_gcs / "bucket" / "runs" / "smoke"  # What the bucket holds.
    config = smoke.get_config()
    config.data.data_dir = str(tmp_path / "tfds")
    config.max_steps_per_run = 3  # The first invocation stops at the step-3 checkpoint.
    assert train_lib.run(config, workdir) == train_lib.EXIT_STOPPED_EARLY
    assert workdir_lib.RunDir(workdir).latest_logged_step() == 3
    assert train_lib.run(config, workdir) == train_lib.EXIT_FINISHED

    assert not (tmp_path / "gs:").exists()
    run = workdir_lib.RunDir(workdir)
    assert run.read_config().total_steps == 6
    records = run.read_metrics()
    keys = [(r["step"], r["split"]) for r in records]
    assert len(keys) == len(set(keys)) and (6, "eval") in keys  # The resume repeated nothing.
    assert {s for s, split in keys if split == "train"} == {2, 4, 6}
    info = run.read_run_info()
    assert [i["start_step"] for i in info["invocations"]] == [0, 3]  # Resumed, not restarted.
    report = run.read_report()
    assert report["step"] == 6 and report["mean_iou"] == records[-1]["mean_iou"]
    for name in ("report.json", "per_class.md", "confusion_matrix.png", "predictions.png"):
        assert (local / "eval" / name).stat().st_size > 0, name
    assert (local / "eval" / "curves.png").read_bytes().startswith(b"\x89PNG")
    # TensorBoard reads the bucket's event files: each eval step once, as metrics.jsonl has it.
    acc = plugin_event_accumulator.EventAccumulator(str(local / "tensorboard" / "eval"))
    acc.Reload()
    evals = {
        e.step: float(tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors("mean_iou")
    }
    expected = {r["step"]: r["mean_iou"] for r in records if r["split"] == "eval"}
    assert evals == {step: float(np.float32(v)) for step, v in expected.items()}  # float32 in TB
    with checkpointing.Checkpointer(workdir, read_only=True) as ckpt:
        assert ckpt.all_steps() == [3, 6]
    assert sorted(p.name for p in (local / "checkpoints").iterdir()) == ["3", "6"]
    # Local-only by design (workdir.py): no lock (no exclusive create), no train.log (appends).
    assert not (local / "train.lock").exists() and not (local / "train.log").exists()


def _config_json(tmp_path, edit=None) -> str:
    """A run's config.json (configs/base.py as train.py writes it), edited as JSON by `edit`."""
    from configs import base

    workdir_lib.write_config(tmp_path, base.get_config())
    path = tmp_path / "config.json"
    raw = json.loads(path.read_text())
    if edit:
        edit(raw)
    path.write_text(json.dumps(raw))
    return str(path)


def test_read_config_types_each_value_like_the_command_line_naming_key_and_file(tmp_path):
    path = _config_json(tmp_path)
    loaded = workdir_lib.read_config(tmp_path)
    # Typed like --config.<key>=...: tuples come back as tuples, placeholders as None.
    assert loaded.data.crop_size == (96, 96) and loaded.model.base_width == 16
    assert loaded.data.data_dir is None
    cases = [
        # A hand-edited "base_width": "4" used to end in a TypeError from the model's conv
        # shapes, naming neither the key nor the file (issue 23, item 11).
        (("model", "base_width"), "4", r"config\.model\.base_width in .* is '4' \(str\) but must "),
        (("model", "use_batchnorm"), 1, r"config\.model\.use_batchnorm .* must be a bool"),
        (("optim", "learning_rate"), True, r"config\.optim\.learning_rate .* must be a float"),
        (("data", "crop_size"), 96, r"config\.data\.crop_size .* must be a tuple"),
        (("eval", "mode"), None, r"config\.eval\.mode in .* is None"),
        (("data", "folder"), "my_folder", r"config\.data\.folder in .* not a group of settings"),
        # Typed but ill-formed: the start-up checks that eval/predict/export need, same file.
        (("data", "crop_size"), [96], r"config\.json: config\.data\.crop_size = \(96,\): must"),
        (("eval", "tile_in"), [572], r"config\.json: config\.eval\.tile_in: tile_in must be 2"),
        (("model", "num_classes"), 1, r"config\.json: config\.model\.num_classes = 1 but"),
    ]
    for (group, key), value, message in cases:
        _config_json(tmp_path, lambda raw, g=group, k=key, v=value: raw[g].__setitem__(k, v))
        with pytest.raises(ValueError, match=message) as error:
            workdir_lib.read_config(tmp_path)
        assert path in str(error.value)


def test_read_config_loads_a_config_json_of_an_earlier_version(tmp_path):
    def older(raw):
        # Keys added since (absent), a key since removed (kept as written), ints for floats.
        del raw["eval"]["isbi_metrics"], raw["data"]["pad_buckets"], raw["data"]["folder"]
        raw["model"]["fcn_head"] = "score_fr"
        raw["optim"]["learning_rate"] = 1

    _config_json(tmp_path, older)
    loaded = workdir_lib.read_config(tmp_path)
    assert "isbi_metrics" not in loaded.eval and "pad_buckets" not in loaded.data
    assert "folder" not in loaded.data
    assert loaded.model.fcn_head == "score_fr"
    assert loaded.optim.learning_rate == 1.0 and isinstance(loaded.optim.learning_rate, float)


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    """A full disk mid-write (eval/report.json): the previous report stays whole and no
    report.json.tmp is left behind."""
    from etils import epath

    report = epath.Path(tmp_path) / "report.json"
    workdir_lib.write_json(report, {"step": 1})
    real = epath.Path.write_text

    def disk_full(self, text, *args, **kwargs):
        real(self, text[:3], *args, **kwargs)  # part of it, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(epath.Path, "write_text", disk_full)
    with pytest.raises(OSError, match="No space"):
        workdir_lib.write_json(report, {"step": 2})
    monkeypatch.undo()
    assert json.loads(report.read_text()) == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
