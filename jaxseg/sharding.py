"""Device mesh and shardings for data-parallel and fsdp (ZeRO-3 style) training.

One `jax.sharding.Mesh` with axes `("data", "fsdp")` covers every device of every process.
Activations (the batch) are split over both axes, so each device sees a distinct slice of the
batch; the `fsdp` axis additionally splits large parameter and optimizer-state arrays, which jit
all-gathers on use (big_vision's fsdp recipe). With `num_fsdp=1` this is plain data parallelism
with replicated state. The same functions serve 1 CPU, 8 fake CPU devices, one GPU host or many
hosts after `jax.distributed.initialize()`.
"""

import math

import jax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
MESH_AXES = (DATA_AXIS, FSDP_AXIS)


def make_mesh(num_data: int = -1, num_fsdp: int = 1) -> Mesh:
    """Builds the `("data", "fsdp")` mesh over all devices of all processes.

    Args:
      num_data: size of the data-parallel axis; -1 infers it as `device_count // num_fsdp`.
      num_fsdp: size of the fsdp axis (1 = parameters replicated).

    Returns:
      A mesh of shape `{"data": num_data, "fsdp": num_fsdp}` with Auto axis types.

    Raises:
      ValueError: if the sizes are not positive or their product is not the device count.
    """
    num_devices = jax.device_count()
    if num_fsdp < 1 or (num_data < 1 and num_data != -1):
        raise ValueError(
            f"Mesh sizes must be positive (or num_data=-1 to infer): got num_data={num_data}, "
            f"num_fsdp={num_fsdp}."
        )
    if num_data == -1:
        if num_devices % num_fsdp:
            raise ValueError(
                f"num_fsdp={num_fsdp} does not divide the device count {num_devices}; "
                f"choose a divisor of {num_devices}."
            )
        num_data = num_devices // num_fsdp
    if num_data * num_fsdp != num_devices:
        raise ValueError(
            f"Mesh data x fsdp = {num_data} x {num_fsdp} = {num_data * num_fsdp} does not "
            f"match the {num_devices} available devices."
        )
    # jax 0.10's make_mesh defaults to Explicit axes, under which sharding becomes part of the
    # type and ops such as bincount behave differently; the whole project assumes Auto.
    return jax.make_mesh((num_data, num_fsdp), MESH_AXES, axis_types=(AxisType.Auto, AxisType.Auto))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding for batch arrays `[N, ...]`: dim 0 split over both mesh axes.

    N must be divisible by `mesh.size` (the global batch size, over all processes).
    """
    return NamedSharding(mesh, P(MESH_AXES))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding that places a full copy of an array on every device of `mesh`."""
    return NamedSharding(mesh, P())


def _fsdp_spec(shape: tuple[int, ...], fsdp_size: int, min_fsdp_size: int) -> P:
    """PartitionSpec putting the largest fsdp-divisible dim of `shape` on "fsdp", if worth it."""
    if fsdp_size <= 1 or math.prod(shape) < min_fsdp_size:
        return P()
    # Largest dim first; among equal sizes the earlier dim wins (sorted() is stable), so the
    # choice is deterministic and identical on every process.
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % fsdp_size == 0:
            spec = [None] * len(shape)
            spec[dim] = FSDP_AXIS
            return P(*spec)
    return P()


def state_shardings(abstract_tree, mesh: Mesh, *, min_fsdp_size: int = 2**18):
    """Shardings for a train-state pytree: replicated, or fsdp-sharded when fsdp > 1.

    Args:
      abstract_tree: pytree whose leaves have `.shape` (e.g. `jax.ShapeDtypeStruct` from
        `jax.eval_shape(init_fn, ...)`, or arrays).
      mesh: a mesh from `make_mesh`.
      min_fsdp_size: leaves with fewer elements stay replicated: gathering them costs more
        latency than their memory is worth (2**18 float32 = 1 MiB).

    Returns:
      A pytree of `NamedSharding` with the structure of `abstract_tree`. If the mesh's fsdp
      axis has size 1 every leaf is replicated `P()`. Otherwise a leaf with at least
      `min_fsdp_size` elements has its largest dimension that is divisible by the fsdp size
      sharded over "fsdp"; small leaves and leaves with no divisible dimension are replicated.
    """
    fsdp_size = mesh.shape[FSDP_AXIS]
    return jax.tree.map(
        lambda x: NamedSharding(mesh, _fsdp_spec(tuple(x.shape), fsdp_size, min_fsdp_size)),
        abstract_tree,
    )


def with_shardings(abstract_tree, shardings):
    """Attaches `shardings` to `abstract_tree`, giving `ShapeDtypeStruct`s with `.sharding`.

    This is the restore target orbax wants: each leaf is read straight into its sharding.
    """
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_tree, shardings
    )


def describe_devices(mesh: Mesh | None = None) -> str:
    """One-line summary of the device layout, for the start-up log.

    E.g. "process 0 of 1; devices: 8 local / 8 global (cpu); mesh: data=4 x fsdp=2".
    """
    devices = jax.devices()
    kinds = sorted({d.device_kind for d in devices})
    text = (
        f"process {jax.process_index()} of {jax.process_count()}; "
        f"devices: {jax.local_device_count()} local / {jax.device_count()} global "
        f"({jax.default_backend()}: {', '.join(kinds)})"
    )
    if mesh is not None:
        text += "; mesh: " + " x ".join(f"{name}={size}" for name, size in mesh.shape.items())
    return text
