r"""Sweep files and their plan: load and validate a sweep, and list its runs (nothing runs here).

A sweep file (`configs/sweeps/*.py`) defines `get_sweep() -> Sweep`: a base config file, named
variants (each a dict of `config.*` overrides) and the seeds. Every run is the train.py command

  python train.py --config <base> --workdir <sweep workdir>/<variant>-seed<seed> \
      --config.<key>=<value> ...   (common overrides, command-line overrides, variant, seed)

so `--print-commands`, the SLURM script and the local runner (runner.py) all run the same thing,
and every run resumes exactly like any train.py run. Before anything runs, `plan` parses each
run's flags against the locked base config the way train.py will (ml_collections config_flags),
so a misspelt key fails at once, naming the variant and the closest valid key.

Run order: seed-major (every variant once with the first seed, then the next seed), variants in
the file's order; names `<variant>-seed<seed>`. A variant may start from another variant's run of
the same seed (`init_from=run_dir("fcn32s")`, the FCN paper's staged training); that variant
must come earlier.

Sweep files and base configs are loaded by path; sys.path is never edited. A base config that
imports its parent (`from configs import default`) finds the repository's `configs` package
through `import_configs_package`.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import os
import re
import sys
import types
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

# The checkout this package lives in: base configs are named relative to it.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclasses.dataclass(frozen=True)
class RunDir:
    """Placeholder for the workdir of `variant`'s run with the same seed (see `run_dir`)."""

    variant: str


def run_dir(variant: str) -> RunDir:
    """An override value meaning "the run of `variant` with this run's seed", e.g.
    `{"init_from": run_dir("fcn32s")}` trains FCN-16s from the FCN-32s run (staged training)."""
    return RunDir(variant)


@dataclasses.dataclass(frozen=True)
class Sweep:
    """What a sweep file's `get_sweep()` returns.

    Attributes:
      base: config file, relative to the repository root (e.g. "configs/default.py").
      variants: {name: {"dotted.config.key": value}}, in run order; names become directories.
      seeds: `config.seed` of each repetition.
      common: overrides applied to every variant (before the variant's own).
      description: one line for results.md.
    """

    base: str
    variants: Mapping[str, Mapping[str, Any]]
    seeds: Sequence[int] = (0,)
    common: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    description: str = ""


@dataclasses.dataclass
class Run:
    """One variant x seed: its directory, its train.py flags and the config they resolve to."""

    variant: str
    seed: int
    name: str
    workdir: str  # As the user gave the sweep workdir (may be relative), + name.
    flags: list[str]  # --config.* overrides, in order.
    config: ml_collections.ConfigDict
    depends_on: list[str]  # Names of runs this one initialises from.
    own_flags: list[str] = dataclasses.field(default_factory=list)  # The variant's own flags.


@dataclasses.dataclass
class Plan:
    """A validated sweep: every run, in order."""

    sweep_file: str
    sweep: Sweep
    workdir: str
    runs: list[Run]

    @property
    def variants(self) -> list[str]:
        return list(dict.fromkeys(r.variant for r in self.runs))


class SweepError(ValueError):
    """A sweep file, override or run directory that cannot be run as asked."""


# ---------------------------------------------------------------------------------------------
# Loading and validation.


def import_configs_package() -> types.ModuleType:
    """The `configs` package that base configs import their parents from (`from configs import
    default`): the one already imported, else this repository's `configs/`, imported by path.

    train.py and sweep.py could also find it on sys.path (Python puts the script's folder, the
    repository root, there); a notebook or script elsewhere could not, and sys.path stays as
    the caller left it. Loaded by path, the package's submodules load from that folder.
    """
    if "configs" in sys.modules:
        return sys.modules["configs"]
    folder = os.path.join(REPO_ROOT, "configs")
    init = os.path.join(folder, "__init__.py")
    if not os.path.isfile(init):
        raise SweepError(f"no configs package at {folder}")
    spec = importlib.util.spec_from_file_location(
        "configs", init, submodule_search_locations=[folder]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["configs"] = module  # Before executing it, as the import system does.
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["configs"]
        raise
    return module


def load_sweep(path: str) -> Sweep:
    """Imports the sweep file at `path` and returns its `get_sweep()`; errors name the file."""
    if not os.path.isfile(path):
        raise SweepError(f"no sweep file {path}")
    # By path, under a private name; the file imports jaxseg.sweeps (importable wherever this
    # module is), and its base config is loaded by load_config.
    spec = importlib.util.spec_from_file_location("_jaxseg_sweep_file", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_sweep"):
        raise SweepError(f"{path} defines no get_sweep()")
    sweep = module.get_sweep()
    if not isinstance(sweep, Sweep):
        raise SweepError(f"{path}: get_sweep() returned {type(sweep).__name__}, not a Sweep")
    if not sweep.variants:
        raise SweepError(f"{path}: the sweep has no variants")
    if not sweep.seeds or len(set(sweep.seeds)) != len(sweep.seeds):
        raise SweepError(f"{path}: seeds must be distinct and non-empty, got {sweep.seeds}")
    for name in sweep.variants:
        if not _NAME_RE.match(name):
            raise SweepError(
                f"{path}: variant name {name!r} must be letters, digits and _.+- (a directory name)"
            )
    return sweep


def format_value(value: Any) -> str:
    """A Python override value as train.py's `--config.<key>=<value>` text."""
    if isinstance(value, bool | int | float):
        return repr(value)
    if isinstance(value, str):
        return value
    if isinstance(value, tuple | list):
        return repr(tuple(value))
    raise SweepError(f"cannot pass {value!r} ({type(value).__name__}) as a --config flag")


def _config_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in config.items():
        keys.append(prefix + k)
        if isinstance(v, ml_collections.ConfigDict):
            keys.extend(_config_keys(v, prefix + k + "."))
    return keys


def _check_key(config: ml_collections.ConfigDict, key: str, where: str) -> None:
    """Raises SweepError naming `where` and the closest key if `key` is not in `config`."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            close = difflib.get_close_matches(key, _config_keys(config), n=1, cutoff=0.6)
            hint = f'; did you mean "{close[0]}"?' if close else ""
            raise SweepError(f'{where}: no config key "{key}" in the base config{hint}')
        node = node[part]
    if isinstance(node, ml_collections.ConfigDict):
        raise SweepError(f'{where}: "{key}" is a group of settings; override its fields')


def load_config(base: str, flags: Sequence[str]) -> ml_collections.ConfigDict:
    """The locked config train.py builds from `--config=<base>` plus `flags` (same parser)."""
    from absl import flags as absl_flags
    from ml_collections import config_flags

    import_configs_package()  # The base config may import configs.default and the like.
    argv = ["train.py", f"--config={base}", *flags]
    values = absl_flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "", flag_values=values, lock_config=True, sys_argv=argv
    )
    values(argv)
    return values.config


def parse_overrides(texts: Sequence[str]) -> list[tuple[str, str]]:
    """["--config.a.b=1", ...] (command-line form) -> [("a.b", "1"), ...]."""
    out = []
    for text in texts:
        m = re.match(r"^--?config\.([A-Za-z0-9_.]+)=(.*)$", text, re.S)
        if not m:
            raise SweepError(f"expected --config.<key>=<value>, got {text!r}")
        out.append((m.group(1), m.group(2)))
    return out


def plan(
    sweep_file: str,
    workdir: str,
    *,
    overrides: Sequence[str] = (),
    variants: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    sweep: Sweep | None = None,
) -> Plan:
    """Loads and validates a sweep; returns every run, in run order. Nothing is run or written.

    Args:
      sweep_file: path of a `configs/sweeps/*.py` file.
      workdir: the sweep's directory; runs go to `<workdir>/<variant>-seed<seed>`.
      overrides: `--config.<key>=<value>` texts applied to every run (e.g. another data set).
      variants: run only these variants (names from the file), in the file's order.
      seeds: replaces the file's seeds.
      sweep: use this Sweep instead of the file's get_sweep() (`sweep_file` still names it).

    Raises:
      SweepError naming the sweep file, variant and key of any override the base config
      rejects, and any run directory whose config.json disagrees with the sweep.
    """
    sweep = sweep or load_sweep(sweep_file)
    base = sweep.base if os.path.isabs(sweep.base) else os.path.join(REPO_ROOT, sweep.base)
    if not os.path.isfile(base):
        raise SweepError(f"{sweep_file}: base config {sweep.base} does not exist")
    base_rel = os.path.relpath(base, REPO_ROOT) if base.startswith(REPO_ROOT) else base
    base_config = load_config(base, [])
    cli = parse_overrides(overrides)
    names = list(sweep.variants)
    if variants:
        unknown = [v for v in variants if v not in sweep.variants]
        if unknown:
            raise SweepError(f"{sweep_file}: no variant(s) {unknown}; the variants are {names}")
        names = [v for v in names if v in set(variants)]
    seeds = list(seeds) if seeds else list(sweep.seeds)

    for key, _ in cli:
        _check_key(base_config, key, f"{sweep_file}: command-line override")
    for key in sweep.common:
        _check_key(base_config, key, f"{sweep_file}: common overrides")
    for variant in names:
        for key in sweep.variants[variant]:
            _check_key(base_config, key, f'{sweep_file}: variant "{variant}"')
            if key == "seed":
                raise SweepError(f'{sweep_file}: variant "{variant}" sets "seed"; use seeds=')
            if key in dict(cli):
                raise SweepError(
                    f'{sweep_file}: the command-line override of "{key}" would erase variant '
                    f'"{variant}"\'s own setting of it'
                )

    runs = []
    for seed in seeds:
        for variant in names:
            runs.append(_make_run(sweep_file, sweep, base_rel, workdir, variant, seed, cli, names))
    _check_existing(runs)
    return Plan(sweep_file=sweep_file, sweep=sweep, workdir=workdir, runs=runs)


def run_name(variant: str, seed: int) -> str:
    return f"{variant}-seed{seed}"


def _make_run(sweep_file, sweep, base, workdir, variant, seed, cli, names) -> Run:
    where = f'{sweep_file}: variant "{variant}"'
    # (key, value, is_text): command-line overrides are already flag text (train.py parses them).
    items = [(k, v, False) for k, v in sweep.common.items()]
    items += [(k, v, True) for k, v in cli]
    items += [(k, v, False) for k, v in sweep.variants[variant].items()]
    # One flag per key, the last setting winning: absl accumulates repeated tuple-valued
    # --config flags ((64, 64) then (148, 148) would give (64, 64, 148, 148)).
    merged = {}
    for key, value, is_text in items:
        merged.pop(key, None)
        merged[key] = (value, is_text)
    flags, expected, depends_on = [], {}, []
    for key, (value, is_text) in merged.items():
        if isinstance(value, RunDir):
            if value.variant in sweep.variants and value.variant not in names:
                raise SweepError(
                    f'{where} starts from variant "{value.variant}" (run_dir): select it too'
                )
            if value.variant not in names or names.index(value.variant) >= names.index(variant):
                raise SweepError(
                    f'{where}: {key}=run_dir("{value.variant}") must name a variant that runs '
                    f"before it (variants, in order: {names})"
                )
            depends_on.append(run_name(value.variant, seed))
            value = os.path.join(workdir, run_name(value.variant, seed))
        try:
            text = value if is_text else format_value(value)
        except SweepError as e:
            raise SweepError(f'{where}, key "{key}": {e}') from None
        flags.append(f"--config.{key}={text}")
        if not is_text:
            expected[key] = value
    flags.append(f"--config.seed={seed}")
    own = [f for f in flags if f.split("=")[0].removeprefix("--config.") in sweep.variants[variant]]
    try:
        config = load_config(os.path.join(REPO_ROOT, base), flags)
    except Exception as e:  # absl / ml_collections parse and type errors.
        raise SweepError(f"{where}: the base config {base} rejects its overrides: {e}") from e
    for key, value in expected.items():
        got = _get(config, key)
        if isinstance(value, list | tuple):
            same = isinstance(got, list | tuple) and list(got) == list(value)
        else:
            same = got == value
        if not same:  # A value the flag text cannot carry (train.py would run something else).
            raise SweepError(f'{where}: "{key}" = {value!r} came out of train.py as {got!r}')
    return Run(
        variant=variant,
        seed=seed,
        name=run_name(variant, seed),
        workdir=os.path.join(workdir, run_name(variant, seed)),
        flags=flags,
        config=config,
        depends_on=depends_on,
        own_flags=own,
    )


def _get(config, key: str) -> Any:
    node = config
    for part in key.split("."):
        node = node[part]
    return node


def _check_existing(runs: list[Run]) -> None:
    """A run directory trained with other settings must not be silently resumed or tabulated."""
    for run in runs:
        path = os.path.join(run.workdir, "config.json")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            found = json.load(f)
        want = json.loads(run.config.to_json_best_effort())
        diff = sorted(_diff(found, want))
        if diff:
            shown = ", ".join(diff[:5]) + (" ..." if len(diff) > 5 else "")
            raise SweepError(
                f"{path} differs from the sweep's config for {run.name} in: {shown}. The sweep "
                "file or its command-line overrides changed since that run started: move that "
                "directory away, or undo the change"
            )


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(prefix + k)
            else:
                out.extend(_diff(a[k], b[k], prefix + k + "."))
        return out
    return [] if a == b else [prefix.rstrip(".") or "<root>"]
