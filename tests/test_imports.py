"""The package's import structure: no import circle, and every module importable on its own,
with or without TensorFlow."""

import ast
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / "jaxseg"
# `python -m` entry points configure XLA before jax is imported, so they refuse a process that
# already loaded jax (the forked children below); tests/test_data_inspect.py runs it as written.
ENTRY_POINTS = {"jaxseg.data.inspect"}


def _module_names() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _top_level_imports(module: str) -> set[str]:
    """jaxseg modules that `module` imports when it is executed (not inside functions)."""
    path = PACKAGE.parent / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = PACKAGE.parent / module.replace(".", "/") / "__init__.py"
    known = set(_module_names())
    found = set()
    for node in ast.parse(path.read_text()).body:  # Module level only: lazy imports don't count.
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "jaxseg"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "jaxseg":
                continue
            for alias in node.names:  # `from jaxseg import x` imports module jaxseg.x if any.
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
    # Edges to the named modules only: that importing jaxseg.a.b first runs jaxseg/a/__init__
    # is no circle even when that __init__ imports b (the package is already in sys.modules).
    return (found & known) - {module}


def test_no_import_circle_in_the_package():
    graph = {m: _top_level_imports(m) for m in _module_names()}
    state: dict[str, str] = {}  # "visiting" / "done"

    def visit(module, path):
        state[module] = "visiting"
        for dep in sorted(graph[module]):
            if state.get(dep) == "visiting":
                cycle = path[path.index(dep) :] + [dep]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, [*path, dep])
        state[module] = "done"

    for module in graph:
        if module not in state:
            visit(module, [module])
    # The state layer sits below training, evaluation and prediction, not beside them.
    assert "jaxseg.train_lib" not in graph["jaxseg.evaluation"] | graph["jaxseg.prediction"]
    assert "jaxseg.train_state" in graph["jaxseg.evaluation"]
    # Sweeps sit outside the library core: no other jaxseg module imports them.
    core = [m for m in graph if m.split(".")[:2] != ["jaxseg", "sweeps"]]
    assert not [(m, d) for m in core for d in graph[m] if d.startswith("jaxseg.sweeps")]


@pytest.mark.parametrize("tensorflow", ["installed or not", "not installed"])
def test_every_module_imports_alone(tensorflow, request):
    """Each module imported first, in a child forked before any jaxseg module was loaded (the
    third-party libraries are imported once in the parent, so a child costs milliseconds). Also
    where `import tensorflow` fails: TensorFlow is only the SavedModel export's, imported inside
    it."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2"}
    if tensorflow == "not installed":
        env["PYTHONPATH"] = request.getfixturevalue("no_tensorflow_env")["PYTHONPATH"]
    script = f"""
import importlib, os, sys, traceback
import flax.linen, h5py, jax, matplotlib, ml_collections, optax, orbax.checkpoint, PIL.Image
import tensorflow_datasets
try:
    import tensorflow  # Where installed (the savedmodel extra): once here, not in every child.
except ImportError:
    pass
failed = []
for name in {[m for m in _module_names() if m not in ENTRY_POINTS]!r}:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
        except BaseException:
            traceback.print_exc(limit=4)
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if status:
        failed.append(name)
print("failed:", failed)
sys.exit(1 if failed else 0)
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
