"""benchmarks/torch_models.py builds the same networks as jaxseg: with jaxseg's weights copied in,
its outputs equal jaxseg's. Needs the optional `[bench]` extra (torch); skipped without it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from benchmarks.presets import load
from jaxseg.models import build_model

torch = pytest.importorskip("torch")
torch_models = pytest.importorskip("benchmarks.torch_models")


def _torch_state(torch_model, params, stats):
    """jaxseg params/batch stats -> the torch model's state dict, by torch_models.flax_path."""
    flat = {"/".join(k): a for k, a in flatten_dict(params).items()}
    state, used = torch_model.state_dict(), set()
    for name, tensor in torch_model.named_parameters():
        if not tensor.requires_grad:  # frozen bilinear upsampling: built identically
            continue
        path = torch_models.flax_path(torch_model, name)
        a, owner = flat[path], torch_model.get_submodule(name.rsplit(".", 1)[0])
        used.add(path)
        if a.ndim == 4:  # HWIO -> OIHW; transposed convs: IOHW with the kernel flipped
            if isinstance(owner, torch.nn.ConvTranspose2d):
                a = a[::-1, ::-1].transpose(2, 3, 0, 1)
            else:
                a = a.transpose(3, 2, 0, 1)
        state[name] = torch.from_numpy(np.ascontiguousarray(a))
    assert used == set(flat), f"jaxseg params with no torch peer: {set(flat) - used}"
    for key, a in {"/".join(k): a for k, a in flatten_dict(stats).items()}.items():
        module, leaf = key.rsplit("/", 1)
        leaf = {"mean": "running_mean", "var": "running_var"}[leaf]
        state[f"{module.replace('/', '.')}.{leaf}"] = torch.from_numpy(np.asarray(a))
    return state


@pytest.mark.parametrize(
    "name, overrides, size, channels",
    [
        ("unet_paper_valid", ["model.base_width=8", "model.use_batchnorm=True"], 188, 3),
        ("unet_default", ["model.base_width=8", "model.upsampling='bilinear'"], 64, 3),
        ("unet_paper", ["model.base_width=8"], 64, 1),
        ("fcn8s", ["model.at_once=True"], 37, 3),
    ],
)
def test_torch_peer_equals_jaxseg(name, overrides, size, channels):
    config = load(name, overrides)
    model = build_model(config.model)
    x = np.random.default_rng(1).normal(size=(2, size, size, channels)).astype(np.float32)
    variables = model.init(jax.random.key(0), jnp.zeros((1, size, size, channels)), train=False)
    rng = np.random.default_rng(2)  # perturbed, so zero-initialised layers matter too
    params = jax.tree.map(
        lambda a: np.asarray(a) + 0.05 * rng.normal(size=a.shape).astype(np.float32),
        variables["params"],
    )
    stats = jax.tree.map(np.asarray, variables.get("batch_stats", {}))
    expected = np.asarray(
        model.apply({"params": params, **({"batch_stats": stats} if stats else {})}, x, train=False)
    )
    torch_model = torch_models.build_model(config.model, channels).eval()
    assert sum(p.numel() for p in torch_model.parameters() if p.requires_grad) == sum(
        a.size for a in jax.tree.leaves(params)
    )
    torch_model.load_state_dict(_torch_state(torch_model, params, stats))
    with torch.no_grad():
        got = torch_model(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
