"""Tests for jaxseg/sharding.py on the 8 fake CPU devices set up by conftest.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

from jaxseg import sharding


@pytest.mark.parametrize(
    ("num_data", "num_fsdp", "expected"),
    [(-1, 1, (8, 1)), (4, 2, (4, 2)), (-1, 4, (2, 4)), (8, 1, (8, 1))],
)
def test_make_mesh_shapes(num_data, num_fsdp, expected):
    mesh = sharding.make_mesh(num_data, num_fsdp)
    assert dict(mesh.shape) == {"data": expected[0], "fsdp": expected[1]}
    assert mesh.axis_types == (AxisType.Auto, AxisType.Auto)
    # Every device appears exactly once.
    assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in jax.devices())


@pytest.mark.parametrize(
    ("num_data", "num_fsdp", "match"),
    [(-1, 3, "does not divide the device count 8"), (4, 4, "4 x 4 = 16"), (0, 1, "positive")],
)
def test_make_mesh_rejects_bad_factorisation(num_data, num_fsdp, match):
    with pytest.raises(ValueError, match=match):
        sharding.make_mesh(num_data, num_fsdp)


def test_batch_sharding_gives_each_device_a_distinct_slice():
    mesh = sharding.make_mesh(4, 2)
    batch = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
    x = jax.device_put(batch, sharding.batch_sharding(mesh))
    shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start)
    assert len(shards) == 8
    # Rows 2i, 2i+1 on the i-th device: together they tile the batch with no overlap.
    np.testing.assert_array_equal(np.concatenate([np.asarray(s.data) for s in shards]), batch)
    assert {s.data.shape for s in shards} == {(2, 3)}


def _abstract_state():
    f32 = jnp.float32
    return {
        "conv": jax.ShapeDtypeStruct((3, 3, 64, 128), f32),  # 73728 elements, 128 is largest
        "dense": jax.ShapeDtypeStruct((6, 1001), f32),  # 1001 % 4 != 0, 6 % 4 != 0
        "tall": jax.ShapeDtypeStruct((256, 20), f32),  # only dim 0 divisible by 4
        "bias": jax.ShapeDtypeStruct((128,), f32),  # small
        "step": jax.ShapeDtypeStruct((), jnp.int32),
    }


def test_state_shardings_replicates_everything_without_fsdp():
    mesh = sharding.make_mesh(8, 1)
    shardings = sharding.state_shardings(_abstract_state(), mesh, min_fsdp_size=1)
    assert {k: s.spec for k, s in shardings.items()} == dict.fromkeys(_abstract_state(), P())


def test_state_shardings_fsdp_picks_largest_divisible_dim():
    mesh = sharding.make_mesh(2, 4)
    shardings = sharding.state_shardings(_abstract_state(), mesh, min_fsdp_size=4096)
    specs = {k: s.spec for k, s in shardings.items()}
    assert specs == {
        "conv": P(None, None, None, "fsdp"),
        "dense": P(),  # big enough but no dimension divisible by 4
        "tall": P("fsdp", None),  # largest dim divisible by 4
        "bias": P(),  # below min_fsdp_size
        "step": P(),
    }
    # The default threshold (2**18 elements) keeps all of these small leaves replicated.
    default = sharding.state_shardings(_abstract_state(), mesh)
    assert all(s.spec == P() for s in default.values())


def test_state_shardings_tie_goes_to_first_dim():
    mesh = sharding.make_mesh(4, 2)
    tree = {"square": jax.ShapeDtypeStruct((64, 64), jnp.float32)}
    assert sharding.state_shardings(tree, mesh, min_fsdp_size=1)["square"].spec == P("fsdp", None)


def test_jit_with_state_and_batch_shardings():
    mesh = sharding.make_mesh(2, 4)
    abstract = _abstract_state()
    state_sh = sharding.state_shardings(abstract, mesh, min_fsdp_size=4096)
    batch_sh = sharding.batch_sharding(mesh)

    def init():
        return jax.tree.map(lambda x: jnp.ones(x.shape, x.dtype), abstract)

    def step(state, batch):
        # Touch every leaf so the fsdp-sharded ones are gathered and re-sharded.
        new = jax.tree.map(lambda x: x + 1, state)
        return new, batch * 2.0

    state = jax.jit(init, out_shardings=state_sh)()
    batch = jax.device_put(jnp.arange(8 * 5, dtype=jnp.float32).reshape(8, 5), batch_sh)
    new_state, out = jax.jit(
        step, in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, batch_sh)
    )(state, batch)

    for key, leaf in new_state.items():
        assert leaf.sharding.is_equivalent_to(state_sh[key], leaf.ndim), key
        np.testing.assert_array_equal(np.asarray(leaf), np.full(leaf.shape, 2, leaf.dtype))
    assert new_state["conv"].addressable_shards[0].data.shape == (3, 3, 64, 32)
    assert out.sharding.is_equivalent_to(batch_sh, 2)
    np.testing.assert_array_equal(
        np.asarray(out), np.arange(40, dtype=np.float32).reshape(8, 5) * 2
    )


def test_with_shardings_builds_restore_target():
    mesh = sharding.make_mesh(4, 2)
    abstract = _abstract_state()
    target = sharding.with_shardings(abstract, sharding.state_shardings(abstract, mesh))
    assert all(t.sharding.mesh == mesh for t in target.values())
    assert target["conv"].shape == (3, 3, 64, 128) and target["step"].dtype == jnp.int32


def test_describe_devices_names_layout():
    text = sharding.describe_devices(sharding.make_mesh(4, 2))
    assert "process 0 of 1" in text
    assert "8 local / 8 global" in text
    assert text.endswith("mesh: data=4 x fsdp=2")
