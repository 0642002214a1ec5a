"""Tests for jaxseg/preemption.py: SIGTERM handling, one agreed stop step over processes."""

import os
import signal
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxseg import preemption


def _wait_for(predicate, timeout_s=2.0):
    deadline = time.monotonic() + timeout_s
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


def test_preemption_watcher_sigterm_sets_flag_and_restores_handler():
    calls = []

    def outer_handler(signum, frame):
        calls.append(signum)

    original = signal.signal(signal.SIGTERM, outer_handler)
    try:
        with preemption.PreemptionWatcher() as watcher:
            assert not watcher.should_stop(0)
            os.kill(os.getpid(), signal.SIGTERM)
            assert _wait_for(lambda: watcher.signal_received)
            assert watcher.should_stop(1)
        assert calls == []  # The watcher, not the outer handler, took the signal.
        assert signal.getsignal(signal.SIGTERM) is outer_handler
        os.kill(os.getpid(), signal.SIGTERM)
        assert _wait_for(lambda: calls == [signal.SIGTERM])
    finally:
        signal.signal(signal.SIGTERM, original)


def test_preemption_watcher_multiprocess_agreement(monkeypatch):
    # Two processes simulated: this one got no SIGTERM, the other did. Without jax's preemption
    # service the flags are all-gathered on sync steps only, so both stop at the same step.
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(
        multihost_utils, "process_allgather", lambda flag: np.array([flag, np.int32(1)])
    )
    service_enabled = jax.config.jax_enable_preemption_service
    jax.config.update("jax_enable_preemption_service", False)
    try:
        with preemption.PreemptionWatcher(sync_every_steps=5) as watcher:
            assert [watcher.should_stop(s) for s in (3, 4, 5)] == [False, False, True]
            assert not watcher.signal_received
    finally:
        jax.config.update("jax_enable_preemption_service", service_enabled)

    # With the service, jax owns SIGTERM: no Python handler, and jax names the sync step
    # (asked through orbax, which calls this function).
    monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point", lambda step: step == 7)
    before = signal.getsignal(signal.SIGTERM)
    with preemption.PreemptionWatcher() as watcher:
        assert signal.getsignal(signal.SIGTERM) is before
        assert [watcher.should_stop(s) for s in (6, 7)] == [False, True]


def test_sigterm_during_the_first_data_set_build_unwinds_and_leaves_no_partial_build(tmp_path):
    """SIGTERM while tfds writes the data set: `Interrupted` (train.py exits 75 on it), tfds
    removes its incomplete build directory, the handler before is back; the rerun builds."""
    import threading

    import pytest

    from configs.base import data_config
    from jaxseg.data import loading

    cfg = data_config()
    cfg.data_dir = str(tmp_path / "tfds")
    cfg.synthetic.image_size = 16
    cfg.synthetic.num_train = 20_000  # some seconds of generating: time to be interrupted
    cfg.synthetic.num_validation = 4

    def building():
        return any("incomplete" in p.name for p in tmp_path.rglob("*"))

    def interrupt_when_building():
        if _wait_for(building, timeout_s=60.0):
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    killer = threading.Thread(target=interrupt_when_building)
    killer.start()
    with pytest.raises(preemption.Interrupted, match="signal 15"):
        with preemption.sigterm_raises():
            loading.open_split(cfg, "train", key="test")
            time.sleep(60)  # not reached unless the signal missed the build
    killer.join()
    assert signal.getsignal(signal.SIGTERM) is before
    assert not building(), sorted(p.name for p in tmp_path.rglob("*incomplete*"))
    cfg.synthetic.num_train = 8  # the rerun (smaller, to be quick) builds normally
    _, source = loading.open_split(cfg, "train", key="test")
    assert len(source) == 8
