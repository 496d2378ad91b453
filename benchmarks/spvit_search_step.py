"""SPViT search step vs dense train step: same model shape, batch and optimizer.

  python benchmarks/spvit_search_step.py [--variant deit_tiny --image 32 --patch 4 --batch 64]

The search step runs all three attention candidates (msa, conv3, conv1) and the gate paths of
every layer; the dense step runs msa only; the multi-path ablation (`spvit.weight_sharing=False`)
runs conv candidates with their own weights. Prints median step times, timed interleaved.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.train_step import time_steps  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--variant", default="deit_tiny")
  parser.add_argument("--image", type=int, default=32)
  parser.add_argument("--patch", type=int, default=4)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--pruned", action="store_true",
                      help="also a materialised pruned model's fine-tune step and eval latency")
  parser.add_argument("--no-multipath", action="store_true")
  args = parser.parse_args()

  import jax
  import ml_collections
  import numpy as np

  from configs import common as cfgs
  from configs import spvit as spvit_config
  from jaxprune import build_model, dense_spec
  from jaxprune.data.pipeline import to_global
  from jaxprune.methods.common import supervised_loss
  from jaxprune.methods.spvit import search_loss, search_options
  from jaxprune.models.spvit import build_search_model
  from jaxprune.accounting import macs
  from jaxprune.train.mesh import data_sharding, make_mesh
  from jaxprune.train.optim import make_optimizer
  from jaxprune.train.step import init_state, make_train_step, place

  spec = dense_spec(args.variant, image_size=args.image, patch_size=args.patch, num_classes=10)
  config = spvit_config.get_config()
  config.data = cfgs.data_config(mean=(0.5,), std=(0.25,))
  search_cfg = ml_collections.ConfigDict(config.to_dict())
  search_cfg.train, search_cfg.optim = config.search.train, config.search.optim
  mesh = make_mesh()
  rng = np.random.default_rng(0)
  sh = data_sharding(mesh)
  batch = {"image": to_global(rng.integers(0, 255, (args.batch, args.image, args.image, 3),
                                           dtype=np.uint8), sh),
           "label": to_global(rng.integers(0, 10, args.batch).astype(np.int32), sh)}
  dense = build_model(spec)
  multi = spvit_config.get_config()
  multi.spvit.weight_sharing = False
  models = {
      "dense": (dense, supervised_loss(search_cfg, 10)),
      "SPViT search": (build_search_model(dense, search_options(config)),
                       search_loss(search_cfg, 10, 0.6 * macs(spec), 1.0)),
      "multi-path": (build_search_model(dense, search_options(multi)),
                     search_loss(search_cfg, 10, 0.6 * macs(spec), 1.0)),
  }
  if args.no_multipath:
    del models["multi-path"]
  pruned = None
  if args.pruned:
    pruned = build_model(representative_pruned(spec))
    models["pruned fine-tune"] = (pruned, supervised_loss(search_cfg, 10))
  steps = {}
  for name, (model, loss_fn) in models.items():
    graphdef, state, tx = init_state(model, lambda p: make_optimizer(search_cfg.optim, p, 1000))
    step_fn = make_train_step(graphdef, tx, loss_fn, mesh, seed=0)
    holder = {"state": place(state, mesh), "fn": step_fn}

    def step(holder=holder):
      holder["state"], metrics = holder["fn"](holder["state"], batch)
      jax.block_until_ready(metrics["loss"])

    steps[name] = step
  # Interleaved rounds (each model a few steps per round), so drifts of a shared machine hit
  # all models alike.
  times = {name: [] for name in steps}
  for name, step in steps.items():
    time_steps(step, 3, 1)  # compile + warm up
  for _ in range(max(1, args.steps // 2)):
    for name, step in steps.items():
      times[name] += time_steps(step, 0, 2)
  results = {name: statistics.median(t) for name, t in times.items()}
  print(f"\n{args.variant}, {args.image}px, patch {args.patch}, batch {args.batch}, "
        f"{jax.devices()[0].platform}: median step over {len(times['dense'])}, interleaved")
  for name, t in results.items():
    print(f"| {name:<16} | {t:8.1f} ms | {t / results['dense']:.2f}x dense |")
  if pruned is not None:
    from jaxprune.accounting import compare_latency
    lat = compare_latency({"dense": dense, "pruned": pruned}, batch=args.batch, rounds=3)
    ratio = macs(pruned.spec) / macs(spec)
    print(f"pruned: {pruned.spec.layers[0].attn}/{pruned.spec.layers[0].mlp} then "
          f"msa/{pruned.spec.layers[1].mlp} x{len(pruned.spec.layers) - 1}, MACs ratio "
          f"{ratio:.3f}; eval latency batch {args.batch}: dense {lat['dense']:.1f} ms, pruned "
          f"{lat['pruned']:.1f} ms, speed-up {lat['dense'] / lat['pruned']:.2f}x")


def representative_pruned(spec):
  """A pruned arch of the kind SPViT selects on DeiT-S at 3.2 GFLOPs (the reference's assigned
  ops for it: block 0's attention a 1x1 conv, msa elsewhere): every MLP cut to 2/3 width."""
  from jaxprune import ArchSpec
  d = spec.to_dict()
  layers = d["layers"]
  head_dim = spec.width // spec.num_heads
  for layer in layers:
    layer["mlp"] = (layer["mlp"] * 2 // 3) // 8 * 8
  layers[0].update(attn="conv1", heads=0, conv_dim=head_dim)
  return ArchSpec.from_dict(d)


if __name__ == "__main__":
  main()
