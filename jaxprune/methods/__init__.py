"""One module per method, each a readable sequence of checkpointed phases with `run(config,
workdir) -> summary`. Found by `config.method`."""

import importlib

from jaxprune.errors import UserError

METHODS = {"pretrain": "jaxprune.methods.pretrain", "spvit": "jaxprune.methods.spvit",
           "spvit_random": "jaxprune.methods.random_search", "dcvit": "jaxprune.methods.dcvit",
           "practise": "jaxprune.methods.practise"}


def get(name: str):
  if name not in METHODS:
    raise UserError(f"config.method = {name!r} is unknown; allowed are {', '.join(METHODS)}")
  return importlib.import_module(METHODS[name])
