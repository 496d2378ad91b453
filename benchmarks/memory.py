"""Memory of the SPViT search and fine-tune steps at 224 px, and what `train.remat` trades.

  python benchmarks/memory.py                    # DeiT-S and DeiT-B, batch 64 per device
  python benchmarks/memory.py --compile          # also XLA's memory plan of each compiled step
  python benchmarks/memory.py --out docs/memory.md

Per model, step (SPViT search: the search model, gates and budget; fine-tune: the dense-shaped
student with hard distillation from a teacher of the same shape), compute dtype and
`train.remat`:
  - kept for backward: the bytes reverse mode keeps from the forward pass (the residuals of
    `jax.vjp` of the step's loss, from shapes alone: `accounting.backward_residual_bytes`) —
    activations, weights cast to the compute dtype, inputs. Device-independent; what remat cuts.
  - parameters + AdamW state: 3 × float32 parameters (search: gates included).
  - with --compile, XLA's plan of the compiled train step on the default device (temporaries,
    arguments, outputs). On GPU/TPU the scheduler keeps the plan within reach of the residuals;
    XLA's CPU scheduler is not memory-aware (it can hold more than the residuals say).
Then the time remat costs: the DeiT-Ti-shaped train step at 32 px, batch 64 (as
benchmarks/train_step.py), with and without remat, timed interleaved on this machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def configs():
  import ml_collections

  from configs import common as cfgs
  from configs import spvit as spvit_config
  config = spvit_config.get_config()
  config.data = cfgs.data_config(mean=(0.5,), std=(0.25,))
  return config, ml_collections


def step_setups(spec, batch_size: int):
  """(name, model, loss_fn, phase train config, aux) of the search and the fine-tune steps."""
  from flax import nnx

  from jaxprune import build_model
  from jaxprune.accounting import macs
  from jaxprune.methods.spvit import finetune_loss, search_loss, search_options
  from jaxprune.models.spvit import build_search_model
  config, ml_collections = configs()
  dense = build_model(spec)
  classes = spec.num_classes
  search_cfg = ml_collections.ConfigDict(config.to_dict())
  search_cfg.train, search_cfg.optim = config.search.train, config.search.optim
  ft_cfg = ml_collections.ConfigDict(config.to_dict())
  ft_cfg.train, ft_cfg.optim = config.finetune.train, config.finetune.optim
  teacher_graphdef, teacher_state = nnx.split(build_model(spec, seed=1))
  return config, [
      ("SPViT search", build_search_model(dense, search_options(config)),
       search_loss(search_cfg, classes, 0.6 * macs(spec), 1.0), search_cfg, None),
      ("fine-tune (distilled)", dense, finetune_loss(ft_cfg, classes, teacher_graphdef),
       ft_cfg, teacher_state)]


def batch_of(spec, batch_size: int):
  import jax.numpy as jnp
  import numpy as np
  rng = np.random.default_rng(0)
  size = spec.image_size
  return {"image": jnp.asarray(rng.integers(0, 255, (batch_size, size, size, 3), np.uint8)),
          "label": jnp.asarray(rng.integers(0, spec.num_classes, batch_size).astype(np.int32))}


def rows_for(variant: str, batch_size: int, compile_steps: bool) -> list[dict]:
  import jax
  from flax import nnx

  from jaxprune import dense_spec
  from jaxprune.accounting import backward_residual_bytes
  from jaxprune.models.precision import compute_dtype, set_compute_dtype
  from jaxprune.train.mesh import make_mesh
  from jaxprune.train.optim import make_optimizer
  from jaxprune.train.step import init_state, make_train_step, place

  spec = dense_spec(variant, num_classes=1000)
  batch = batch_of(spec, batch_size)
  key = jax.random.key(0)
  _, setups = step_setups(spec, batch_size)
  rows = []
  for name, model, loss_fn, cfg, aux in setups:
    graphdef, state = nnx.split(model)
    params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    for dtype in ("float32", "bfloat16"):
      for remat in (False, True):
        for train in (cfg.train, cfg.search.train, cfg.finetune.train):  # what each loss reads
          train.remat, train.compute_dtype = remat, dtype

        def loss(s):
          m = set_compute_dtype(nnx.merge(graphdef, s), compute_dtype(dtype))
          out = loss_fn(m, batch, key) if aux is None else loss_fn(m, batch, key, aux)
          return out[0]

        row = {"model": variant, "step": name, "dtype": dtype, "remat": remat,
               "batch": batch_size, "kept_bytes": backward_residual_bytes(loss, state),
               "state_bytes": 3 * 4 * params}
        if compile_steps:
          mesh = make_mesh()
          g, st, tx = init_state(model, lambda p: make_optimizer(cfg.optim, p, 1000))
          step = make_train_step(g, tx, loss_fn, mesh, seed=0, aux=aux,
                                 compute_dtype=compute_dtype(dtype))
          plan = step.jitted.lower(place(st, mesh), batch, aux).compile().memory_analysis()
          row.update(temp_bytes=plan.temp_size_in_bytes, argument_bytes=plan.argument_size_in_bytes,
                     output_bytes=plan.output_size_in_bytes)
        rows.append(row)
        print(row, flush=True)
  return rows


def time_trade(rounds: int = 5) -> dict:
  """Median ms of the DeiT-Ti-shaped 32 px train step (batch 64) without and with remat,
  timed interleaved."""
  import jax

  from jaxprune import build_model, dense_spec
  from jaxprune.methods.common import supervised_loss
  from jaxprune.train.mesh import make_mesh
  from jaxprune.train.optim import make_optimizer
  from jaxprune.train.step import init_state, make_train_step, place
  config, ml_collections = configs()
  cfg = ml_collections.ConfigDict(config.to_dict())
  cfg.train, cfg.optim = config.finetune.train, config.finetune.optim
  spec = dense_spec("deit_tiny", image_size=32, patch_size=4, num_classes=10)
  batch, mesh = batch_of(spec, 64), make_mesh()
  steps = {}
  for remat in (False, True):
    c = ml_collections.ConfigDict(cfg.to_dict())
    c.train.remat = remat  # supervised_loss reads `train`
    g, st, tx = init_state(build_model(spec), lambda p: make_optimizer(c.optim, p, 1000))
    step = make_train_step(g, tx, supervised_loss(c, 10), mesh, seed=0)
    st = place(st, mesh)
    for _ in range(2):
      st, m = step(st, batch)
    jax.block_until_ready(m["loss"])
    steps[remat] = [step, st]
  times = {False: [], True: []}
  for _ in range(rounds):
    for remat, (step, st) in steps.items():
      for _ in range(2):
        t0 = time.perf_counter()
        st, m = step(st, batch)
        jax.block_until_ready(m["loss"])
        times[remat].append(1e3 * (time.perf_counter() - t0))
      steps[remat][1] = st
  return {k: statistics.median(v) for k, v in times.items()}


def report(rows: list[dict], trade: dict, device: str, command: str) -> str:
  mib = lambda b: f"{b / 2**20:,.0f}"  # noqa: E731
  planned = "temp_bytes" in rows[0]
  lines = ["# Memory of the search and fine-tune steps at 224 px (written by the benchmark)", "",
           f"`{command}` on {device}; {time.strftime('%Y-%m-%d')}. See the script's docstring "
           "for what each column is. MiB per device at the batch shown.", "",
           "| model | step | dtype | remat | batch | kept for backward | params + AdamW |"
           + (" XLA temp | XLA args | XLA out |" if planned else ""),
           "|---|---|---|---|---:|---:|---:|" + ("---:|---:|---:|" if planned else "")]
  for r in rows:
    lines.append(f"| {r['model']} | {r['step']} | {r['dtype']} | {'on' if r['remat'] else 'off'}"
                 f" | {r['batch']} | {mib(r['kept_bytes'])} | {mib(r['state_bytes'])} |"
                 + (f" {mib(r['temp_bytes'])} | {mib(r['argument_bytes'])} | "
                    f"{mib(r['output_bytes'])} |" if planned else ""))
  lines += ["", f"Time remat costs (DeiT-Ti shape, 32 px, batch 64, float32, {device}, "
            f"interleaved medians): {trade[False]:.0f} ms without, {trade[True]:.0f} ms with "
            f"(×{trade[True] / trade[False]:.2f})."]
  return "\n".join(lines) + "\n"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--variants", default="deit_small,deit_base")
  parser.add_argument("--batch", type=int, default=64, help="images per device")
  parser.add_argument("--compile", action="store_true", help="also XLA's plan (slow on CPU)")
  parser.add_argument("--out", default="", help="also write the report here (e.g. docs/memory.md)")
  args = parser.parse_args()
  import jax
  rows = [r for v in args.variants.split(",") for r in rows_for(v, args.batch, args.compile)]
  trade = time_trade()
  device = f"{jax.devices()[0].device_kind} ({jax.default_backend()})"
  command = "python benchmarks/memory.py " + " ".join(sys.argv[1:])
  text = report(rows, trade, device, command.strip())
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text)


if __name__ == "__main__":
  main()
