"""The methods: one package per method, each declaring itself with a `METHOD = Method(...)`.

A method owns everything about itself — its config checks (`rules`, `check`), the workdir
entries it writes (`outputs`), the config fields a resume may change (`neutral`) or that were
added after runs were saved (`added_defaults`), the model families it runs on — so adding one
edits no core module: a new package under `jaxprune/methods/` is found by `config.method`.
Every method runs in the one skeleton `run`: open the metrics log, `compress` (the method's
phases, each checkpointed and resumable), export the models it names, write `summary.json`,
print its table.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any, Callable

from jaxprune.errors import UserError


@dataclasses.dataclass(frozen=True)
class Outcome:
  """What a method's `compress` hands back to the skeleton.

  Attributes:
    summary: written to `summary.json` (the skeleton adds "exports").
    models: saved model folders by name, exported in every `export.formats` format.
    table: (title, [(row name, row)]) printed by `common.print_table`, or None.
    notes: lines printed after the table (process 0).
  """

  summary: dict[str, Any]
  models: dict[str, str] = dataclasses.field(default_factory=dict)
  table: tuple[str, list[tuple[str, dict[str, Any]]]] | None = None
  notes: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Method:
  """A method, as `config.method` names it.

  Attributes:
    name: the `config.method` value.
    compress: `compress(config, workdir, writer) -> Outcome`, the method's phases.
    summary: one line for `--help`.
    paper: the paper it implements (title, venue, arXiv) and its reference code, or "".
    rules: (dotted path pattern, check) config rules of its own sections (`validate`).
    check: `check(config)`, structural checks run before any work; None = none.
    phases: config sections whose `train.epochs`/`train.steps` set a phase's length.
    outputs: the top-level workdir entries it writes (what `--overwrite` may delete).
    neutral: config paths a resume may change (they do not change what it computes).
    added_defaults: fields added after runs were saved, with the value those runs computed
      with (keyed by the end of the dotted path, as `train.workdir.added_defaults`).
    families: the model families it runs on; None = every registered family.
  """

  name: str
  compress: Callable[..., Outcome]
  summary: str = ""
  paper: str = ""
  rules: tuple[tuple[str, Callable[[Any], str | None]], ...] = ()
  check: Callable[[Any], None] | None = None
  phases: tuple[str, ...] = ()
  outputs: frozenset[str] = frozenset()
  neutral: frozenset[str] = frozenset()
  added_defaults: dict[str, Any] = dataclasses.field(default_factory=dict)
  families: tuple[str, ...] | None = None

  def run(self, config, workdir: str) -> dict[str, Any]:
    return run(self, config, workdir)


_METHODS: dict[str, Method] | None = None


def all_methods() -> dict[str, Method]:
  """Every method, by name: the `METHOD` of each package under `jaxprune/methods/`."""
  global _METHODS
  if _METHODS is None:
    found = {}
    for info in pkgutil.iter_modules(__path__):
      if info.ispkg:
        module = importlib.import_module(f"{__name__}.{info.name}")
        if isinstance(getattr(module, "METHOD", None), Method):
          found[module.METHOD.name] = module.METHOD
    _METHODS = dict(sorted(found.items()))
  return _METHODS


def get(name: str) -> Method:
  methods = all_methods()
  if name not in methods:
    raise UserError(f"config.method = {name!r} is unknown; allowed are {', '.join(methods)}")
  return methods[name]


def run(method: Method, config, workdir: str) -> dict[str, Any]:
  """The one skeleton every method runs in (see the module docstring)."""
  from jaxprune.train.logging import MetricWriter  # noqa: PLC0415
  writer = MetricWriter(workdir)
  try:
    return finish(method.compress(config, workdir, writer), config, workdir)
  finally:
    writer.close()


def finish(out: Outcome, config, workdir: str) -> dict[str, Any]:
  """Exports `out.models`, writes `workdir/summary.json`, prints the table and notes; returns
  the summary written (also for a method's sub-runs, e.g. DC-ViT's per-seed runs)."""
  import jax  # noqa: PLC0415

  from jaxprune.methods import common  # noqa: PLC0415
  summary = dict(out.summary)
  if out.models:
    summary["exports"] = common.export_models(config, workdir, out.models)
  common.write_summary(workdir, summary)
  if out.table:
    common.print_table(*out.table)
  if out.notes and jax.process_index() == 0:
    print("\n".join(out.notes), flush=True)
  return summary
