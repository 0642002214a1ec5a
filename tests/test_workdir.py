"""jaxseg/workdir.py: the training lock (exclusive, names its holder, stale locks taken over)."""

import json
import os
import socket
import subprocess
import sys

import ml_collections
import pytest

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
        {"model": "fcn8s", "optim": {"lr": 1e-4, "boundaries": (10, 20)}, "seed": 0}
    )
    path = workdir_lib.write_config(tmp_path, config)
    assert path == tmp_path / "config.json"
    assert json.loads(path.read_text())["optim"] == {"lr": 1e-4, "boundaries": [10, 20]}
    loaded = workdir_lib.read_config(tmp_path)
    assert loaded.model == "fcn8s" and loaded.optim.lr == 1e-4
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
