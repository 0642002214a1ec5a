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
