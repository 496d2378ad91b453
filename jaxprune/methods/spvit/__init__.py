"""SPViT: single-path search of MSA → convolution and FFN width under a MACs target.

He et al., "Pruning Self-attentions into Convolutional Layers in Single Path", IEEE TPAMI 2024,
arXiv:2111.11802; reference code github.com/ziplab/SPViT.

Phases (each checkpointed; a rerun resumes where it stopped):
  1. dense        the pretrained model (`model.init_from`, or pre-trained here)
  2. search       every MSA layer a nested choice skip ⊂ conv1 ⊂ conv3 ⊂ msa, every FFN unit gated;
                  loss = task + λ·(F_target − F(gates))² in GMACs. At each evaluation the gates
                  are read into an ArchSpec and logged (`search/archs.jsonl`); the search stops
                  at the first within tolerance (`spvit.stop="first"`) or runs to its end.
                  `spvit.search_dir` reuses an earlier run's search instead.
  3. choose       the architecture to fine-tune (`spvit.arch`: automatic, a logged step, the
                  best logged in a MACs band, or an ArchSpec file); drawn to `arch.png`
  4. materialise  the chosen ArchSpec as a physically smaller model (from the search-end or the
                  original weights; on Swin, conv3 blocks inside the searched windows or, with
                  `spvit.swin_conv = "grid"`, on the whole grid), exported to
                  `workdir/search/compact`
  5. finetune     cross-entropy + distillation from the dense model; exported to `workdir/pruned`
  6. compare      params, MACs, accuracy and measured latency, dense vs pruned → summary.json
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from flax import nnx

from jaxprune import accounting, plot, validate
from jaxprune.atomic import write_json
from jaxprune.arch import ArchSpec
from jaxprune.data.augment import renormalise
from jaxprune.errors import UserError
from jaxprune.export import load, save_model
from jaxprune.methods import Method, Outcome, common, pretrain
from jaxprune.methods.phase import train_phase
from jaxprune.models.gates import Gate
from jaxprune.models.spvit import SearchOptions, build_search_model
from jaxprune.methods.spvit.surgery import (check_reachable, conv_form, derive_arch, encode_arch,
                                            gate_masks, materialise, search_macs)
from jaxprune.train.logging import MetricWriter, truncate_jsonl
from jaxprune.train.checkpoint import PhaseCheckpoints
from jaxprune.train.optim import make_optimizer
from jaxprune.train.step import init_state, merge, place


HISTORY = os.path.join("search", "archs.jsonl")


def search_options(config) -> SearchOptions:
  return SearchOptions(alpha=config.spvit.alpha, ffn_group=config.spvit.ffn_group,
                       weight_sharing=config.spvit.get("weight_sharing", True),
                       temperature=config.spvit.temperature)


def gate_readout(model) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(MACs of the thresholded gates, op depth per layer, kept FFN width per layer), traceable."""
  gates, masks, depth, width = [], [], [], []
  for block in model.blocks:
    c, mask = block.gates(None)
    gates.append(c)
    masks.append(mask)
    depth.append(jnp.sum(jax.lax.stop_gradient(c)))
    width.append(jnp.sum(jax.lax.stop_gradient(mask)))
  f = search_macs(model.spec, gates, masks, [b.head_dim for b in model.blocks])
  return f, jnp.stack(depth), jnp.stack(width)


def budget_loss(model, target_macs: float, budget_weight: float):
  """(λ·(F_target − F(gates))² with F in GMACs on the FLOPs path, (F, op depth, FFN width))."""
  f, depth, width = gate_readout(model)
  return budget_weight * ((target_macs - f) / 1e9)**2, (f, depth, width)


def search_loss(config, num_classes: int, target_macs: float, budget_weight: float):
  """Task loss on the sampled path + λ·(F_target − F)² on the thresholded path, in GMACs."""
  ls = config.search.train.label_smoothing

  def loss_fn(model, batch, key):
    data_key, gate_key = jax.random.split(key)
    x, targets = common.preprocess(config, num_classes, batch, data_key, train=True)
    logits = model(x, train=True, gate_key=gate_key,
                   **common.stochastic_depth(config.search.train, key),
                   **common.remat(config.search.train))
    task = common.soft_cross_entropy(logits, targets, ls)
    budget, (f, depth, width) = budget_loss(model, target_macs, budget_weight)
    return task + budget, {"task_loss": task, "budget_loss": budget,
                           "macs_ratio": f / (target_macs / config.spvit.target_ratio),
                           "ops": depth, "ffn_width": width}

  return loss_fn


def auto_budget_weight(config, search_model, s: common.Setup, target_macs: float,
                       dense_macs: float) -> float:
  """λ so that the budget term is `spvit.budget_scale` × the task loss at step 0 (the authors'
  rule of thumb, made automatic): λ = scale·L0 / ((1 − r)·F_dense)², F in GMACs, where L0 is
  the training-path task loss (sampled gates, augmentation, label smoothing) on the first batch.
  """
  loss_fn = search_loss(config, s.data.num_classes, target_macs, 0.0)
  key = jax.random.fold_in(jax.random.key(config.seed), 0)
  graphdef, state = nnx.split(search_model)

  @jax.jit  # one compiled forward: op by op, the gated Swin's took 40 s on CPU (runlocal)
  def task_loss(state, batch, key):
    return loss_fn(nnx.merge(graphdef, state), batch, key)[1]["task_loss"]

  l0 = float(task_loss(state, s.batches(0), key))
  gap = (1 - config.spvit.target_ratio) * dense_macs / 1e9
  return config.spvit.budget_scale * max(l0, 1e-3) / gap**2


def arch_summary(arch: ArchSpec) -> str:
  return " ".join(f"{b.attn}/{b.mlp}" for b in arch.blocks)


def check(config: ml_collections.ConfigDict) -> None:
  """Before any work: `spvit.arch` is well formed and `spvit.search_dir` holds a compatible
  finished search."""
  choice = config.spvit.arch
  if choice.startswith("step:"):
    if not choice[5:].isdigit():
      raise UserError(f"spvit.arch = {choice!r}: expected step:N with N a recorded search step")
  elif choice.startswith("macs:"):
    try:
      lo, hi = (float(v) for v in choice[5:].split("-"))
      assert 0 <= lo < hi
    except (ValueError, AssertionError):
      raise UserError(f"spvit.arch = {choice!r}: expected macs:LO-HI with 0 <= LO < HI, e.g. "
                      "macs:0.55-0.65") from None
  elif choice and not os.path.isfile(os.path.expanduser(choice)):
    raise UserError(f"spvit.arch = {choice!r}: allowed are '' (automatic), step:N, macs:LO-HI "
                    "or an ArchSpec JSON file, which does not exist")
  teacher = config.finetune.distill.get("teacher", "")
  if teacher and not os.path.isfile(os.path.join(os.path.expanduser(teacher), "arch.json")):
    raise UserError(f"finetune.distill.teacher = {teacher!r}: not a saved jaxprune model (a "
                    "folder with arch.json, from jaxprune.save_model or python -m "
                    "jaxprune.convert)")
  d = config.spvit.search_dir
  if d:
    for need in ("config.json", HISTORY, os.path.join("checkpoints", "search")):
      if not os.path.exists(os.path.join(d, need)):
        raise UserError(f"spvit.search_dir = {d!r}: {need} is missing; it must be the workdir "
                        "of an SPViT run whose search has finished")
    with open(os.path.join(d, "config.json")) as f:
      old = json.load(f)
    new = config.to_dict()
    for key in ("model", "search"):
      if old.get(key) != json.loads(json.dumps(new[key], default=repr)):
        raise UserError(f"spvit.search_dir = {d!r} searched with a different {key} section; "
                        f"fine-tuning its architectures needs the same {key} settings")
    for key in ("ffn_group", "alpha"):
      if old.get("spvit", {}).get(key) != new["spvit"][key]:
        raise UserError(f"spvit.search_dir = {d!r} searched with spvit.{key} = "
                        f"{old.get('spvit', {}).get(key)}, this run has {new['spvit'][key]}")


# The reference's fixed λ per model (absolute GFLOPs targets); `spvit.lambda_preset` selects one.
LAMBDA_PRESETS = {"deit_tiny": 20.0, "deit_small": 3.0, "deit_base": 0.06,
                  "swin_tiny": 2.8, "swin_small": 0.4, "swin_base": 0.1}


def run_search(config, workdir: str, dense, writer: MetricWriter) -> tuple[Any, dict]:
  """Searches (resumably); returns (search-end model, record). Every evaluation appends the
  derived architecture, its MACs, accuracy and kept FFN groups to `search/archs.jsonl`; with
  `spvit.stop = "first"` the search ends at the first one within tolerance of the target."""
  scfg = common.phase_config(config, "search")
  s = common.setup(scfg)
  model = build_search_model(dense, search_options(config))
  dense_macs = accounting.macs(dense.spec)
  target = config.spvit.target_ratio * dense_macs
  weight = (LAMBDA_PRESETS[config.spvit.lambda_preset] if config.spvit.lambda_preset else
            config.spvit.budget_weight or auto_budget_weight(scfg, model, s, target, dense_macs))
  history_path = os.path.join(workdir, HISTORY)
  os.makedirs(os.path.dirname(history_path), exist_ok=True)
  tol = config.spvit.tolerance

  def make_evaluate(graphdef):
    accuracy = common.evaluator(scfg, graphdef, s)

    def evaluate(st) -> dict[str, float]:
      search_model = merge(graphdef, jax.device_get(st))
      arch = derive_arch(search_model)
      ratio = accounting.macs(arch) / dense_macs
      out = dict(accuracy(st), arch_macs_ratio=ratio)
      if jax.process_index() == 0:
        with open(history_path, "a") as f:
          f.write(json.dumps({"step": int(st["step"]), "macs_ratio": ratio,
                              "accuracy": out["accuracy"], "arch": arch.to_dict(),
                              "ffn_groups": gate_masks(search_model)}) + "\n")
        print(f"[search] derived arch (attn/mlp per block): {arch_summary(arch)} | MACs ratio "
              f"{ratio:.3f} (target {config.spvit.target_ratio} ± {tol:.0%})", flush=True)
      return out

    return evaluate

  def met(step, metrics) -> bool:
    return within(config, metrics["arch_macs_ratio"])

  t = train_phase(scfg, workdir, "search", model,
                  search_loss(scfg, s.data.num_classes, target, weight), s, writer,
                  evaluate=make_evaluate, eval_every=config.spvit.eval_every,
                  stop_when=met if config.spvit.stop == "first" else None,
                  show=("task_loss", "budget_loss", "macs_ratio"),
                  on_start=lambda start: truncate_jsonl(
                      history_path, lambda row: row["step"] <= start),
                  meta={"arch": dense.spec.to_dict(), "budget_weight": weight})
  record = {"search_steps": t.step, "budget_weight": weight,
            "search_accuracy": t.metrics.get("accuracy")}
  return t.model, record


def within(config, ratio: float) -> bool:
  return abs(ratio - config.spvit.target_ratio) <= config.spvit.tolerance * config.spvit.target_ratio


def load_search(config, search_dir: str, dense) -> tuple[Any, dict]:
  """The search-end model of a finished SPViT run in `search_dir` (no new search)."""
  scfg = common.phase_config(config, "search")
  s = common.setup(scfg)
  model = build_search_model(dense, search_options(config))
  steps = common.total_steps(scfg, s)
  graphdef, state, _ = init_state(model, lambda p: make_optimizer(scfg.optim, p, steps))
  ckpts = PhaseCheckpoints(search_dir, "search")
  state, meta = ckpts.restore(place(state, s.mesh))
  ckpts.close()
  return merge(graphdef, jax.device_get(state)), {
      "search_dir": os.path.abspath(search_dir), "search_steps": int(meta["step"]),
      "budget_weight": meta.get("budget_weight")}


def read_history(search_dir: str) -> list[dict[str, Any]]:
  path = os.path.join(search_dir, HISTORY)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def choose_arch(config, search_model, history: list[dict[str, Any]]
                ) -> tuple[ArchSpec, list[str] | None, dict[str, Any]]:
  """The architecture to fine-tune, per `spvit.arch` (see configs/spvit.py), with the FFN
  groups to keep (None = the largest gate logits) and how it was chosen."""
  choice = config.spvit.arch
  dense_macs = accounting.macs(search_model.spec)
  steps = sorted(r["step"] for r in history)

  def from_row(row, how):
    return (ArchSpec.from_dict(row["arch"]), row.get("ffn_groups"),
            {"chosen_by": how, "step": row["step"], "search_accuracy_then": row["accuracy"]})

  if choice.startswith("step:"):
    rows = [r for r in history if r["step"] == int(choice[5:])]
    if not rows:
      raise UserError(f"spvit.arch = {choice!r}: no architecture was recorded at that step; "
                      f"recorded steps: {steps}")
    arch, masks, how = from_row(rows[-1], choice)
  elif choice.startswith("macs:"):
    lo, hi = (float(v) for v in choice[5:].split("-"))
    rows = [r for r in history if lo <= r["macs_ratio"] <= hi]
    if not rows:
      ratios = sorted(round(r["macs_ratio"], 3) for r in history)
      raise UserError(f"spvit.arch = {choice!r}: no recorded architecture has a MACs ratio in "
                      f"[{lo}, {hi}]; recorded: {ratios}")
    best = max(rows, key=lambda r: (r["accuracy"], -r["macs_ratio"], -r["step"]))
    arch, masks, how = from_row(best, f"best recorded in {choice}")
  elif choice:
    arch, masks, how = read_arch_file(choice), None, {"chosen_by": f"file {choice}"}
  elif config.spvit.stop == "end" and any(within(config, r["macs_ratio"]) for r in history):
    best = max((r for r in history if within(config, r["macs_ratio"])),
               key=lambda r: (r["accuracy"], -r["step"]))
    arch, masks, how = from_row(best, "best recorded within tolerance")
  else:
    arch, masks, how = derive_arch(search_model), None, {"chosen_by": "search end"}
  check_reachable(search_model, arch, f"spvit.arch = {choice!r}")
  ratio = accounting.macs(arch) / dense_macs
  if not within(config, ratio) and not choice:
    logging.warning("search ended without meeting the target: MACs ratio %.3f vs %.3f",
                    ratio, config.spvit.target_ratio)
    print(f"[search] WARNING: target not met: MACs ratio {ratio:.3f} vs "
          f"{config.spvit.target_ratio} (raise search.train.epochs or spvit.budget_weight, or "
          "pick a recorded architecture with spvit.arch)", flush=True)
  return arch, masks, dict(how, macs_ratio=ratio, within_tolerance=within(config, ratio))


def read_arch_file(path: str) -> ArchSpec:
  """An ArchSpec from a JSON file: a bare ArchSpec dict or a saved model's `arch.json`."""
  try:
    with open(os.path.expanduser(path)) as f:
      d = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"spvit.arch = {path!r}: cannot read it as an ArchSpec JSON file "
                    f"({type(e).__name__}: {e})") from None
  return ArchSpec.from_dict(d["arch"] if "arch" in d and "blocks" not in d else d)


def original_weights_model(dense, search_model, config):
  """A search model holding the original dense weights and the search's final gates."""
  fresh = build_search_model(dense, search_options(config))
  nnx.update(fresh, nnx.state(search_model, Gate))
  return fresh


def finetune_loss(config, num_classes: int, teacher_graphdef, teacher_norm=None):
  """Cross-entropy + distillation. `teacher_norm` (mean, std): the teacher's own input
  normalisation when it differs from the student's (an external teacher): its inputs are the
  same augmented images, re-normalised."""
  d = config.finetune.distill
  student_norm = (tuple(config.data.mean), tuple(config.data.std))

  def loss_fn(model, batch, key, teacher_state):
    x, targets = common.preprocess(config, num_classes, batch, key, train=True)
    teacher = nnx.merge(teacher_graphdef, teacher_state)
    student = model(x, train=True, return_dist=True,
                    **common.stochastic_depth(config.finetune.train, key),
                    **common.remat(config.finetune.train))
    x_t = x if teacher_norm is None else renormalise(x, student_norm, teacher_norm)
    loss = common.distillation_loss(student, teacher(x_t), targets, d.kind, d.weight,
                                    d.temperature, config.finetune.train.label_smoothing)
    acc = jnp.mean(jnp.argmax(student[0], -1) == jnp.argmax(targets, -1))
    return loss, {"accuracy": acc}

  return loss_fn


def load_teacher(config, dense) -> tuple[Any, tuple | None]:
  """The distillation teacher: `finetune.distill.teacher` (any `jaxprune.load`-able model that
  takes the same images into the same classes), else the dense model; with the teacher's own
  normalisation when it carries one that differs from the data's."""
  path = config.finetune.distill.get("teacher", "")
  if not path:
    return dense, None
  from jaxprune.export import read_preprocessing
  teacher, want = load(path), dense.spec
  got = teacher.spec
  if (got.image_size, got.in_channels, got.num_classes) != (want.image_size, want.in_channels,
                                                           want.num_classes):
    raise UserError(f"finetune.distill.teacher = {path!r} takes {got.image_size}px "
                    f"{got.in_channels}-channel images into {got.num_classes} classes; the "
                    f"student takes {want.image_size}px {want.in_channels}-channel images into "
                    f"{want.num_classes} classes")
  norm = read_preprocessing(path)
  if jax.process_index() == 0:
    print(f"[finetune] distilling from the teacher {path} ({got.depth} blocks"
          f"{', its own normalisation' if norm else ''})", flush=True)
  if norm and (norm["mean"], norm["std"]) != (list(config.data.mean), list(config.data.std)):
    return teacher, (tuple(norm["mean"]), tuple(norm["std"]))
  return teacher, None


def run_finetune(config, workdir: str, compact, dense, writer: MetricWriter):
  fcfg = common.phase_config(config, "finetune")
  s = common.setup(fcfg)
  teacher, teacher_norm = load_teacher(config, dense)
  teacher_graphdef, teacher_state = nnx.split(teacher)
  t = train_phase(fcfg, workdir, "finetune", compact,
                  finetune_loss(config, s.data.num_classes, teacher_graphdef, teacher_norm), s,
                  writer,
                  seed=config.seed + 1, aux=teacher_state, meta={"arch": compact.spec.to_dict()})
  return t.model, t.metrics


def compress(config: ml_collections.ConfigDict, workdir: str, writer: MetricWriter) -> Outcome:
  """Phases 1-6 of the module docstring."""
  if config.spvit.search_dir and not config.model.init_from:
    dense = load(os.path.join(config.spvit.search_dir, "dense"))  # the model that was searched
  else:
    dense = pretrain.dense_model(config, workdir, writer)
  eval_setup = common.setup(common.phase_config(config, "finetune"))
  dense_acc = common.evaluate_model(common.phase_config(config, "finetune"), dense,
                                    eval_setup)["accuracy"]

  compact_dir = os.path.join(workdir, "search", "compact")
  record_path = os.path.join(workdir, "search", "selected.json")
  if os.path.exists(record_path):
    compact = load(compact_dir)
    with open(record_path) as f:
      record = json.load(f)
  else:
    search_dir = config.spvit.search_dir
    if search_dir:  # fine-tune an architecture of an earlier search, without searching again
      search_model, record = load_search(config, search_dir, dense)
    else:
      search_model, record = run_search(config, workdir, dense, writer)
      search_dir = workdir
    arch, masks, how = choose_arch(config, search_model, read_history(search_dir))
    record.update(how)
    source = (search_model if config.spvit.finetune_from == "search"
              else original_weights_model(dense, search_model, config))
    encode_arch(source, arch, masks)
    compact = materialise(source, conv_form(arch, config.spvit.get("swin_conv", "window")))
    save_model(compact_dir, compact, extra={"selected": record},
               preprocessing=common.preprocessing(config))
    if jax.process_index() == 0:
      write_json(record_path, record, indent=2)
      plot.spvit_search(os.path.join(workdir, "arch.png"), dense.spec, arch,
                        read_history(search_dir), config.spvit.target_ratio)

  pruned, metrics = run_finetune(config, workdir, compact, dense, writer)
  save_model(os.path.join(workdir, "pruned"), pruned, extra={"test_accuracy": metrics["accuracy"]},
             preprocessing=common.preprocessing(config))

  batch = config.latency_batch
  rows = list(zip(("dense", "pruned (SPViT)"),
                  common.describe([(dense, dense_acc), (pruned, metrics["accuracy"])], batch)))
  summary = {"dense": rows[0][1], "pruned": rows[1][1], "arch": pruned.spec.to_dict(),
             "target_ratio": config.spvit.target_ratio, "selected": record,
             "macs_ratio": rows[1][1]["macs"] / rows[0][1]["macs"],
             "speedup": rows[0][1]["latency_ms"] / rows[1][1]["latency_ms"]}
  return Outcome(
      summary, models={"pruned": os.path.join(workdir, "pruned")},
      table=(f"SPViT, target {config.spvit.target_ratio:.0%} of dense MACs; latency: median eval "
             f"forward, batch {batch}", rows),
      notes=(f"selected arch (attn/mlp per block): {arch_summary(pruned.spec)}",
             f"MACs ratio {summary['macs_ratio']:.3f}, measured speed-up "
             f"{summary['speedup']:.2f}x; wrote {os.path.join(workdir, 'summary.json')}"))


FRACTION, POSITIVE = validate.FRACTION, validate.POSITIVE
METHOD = Method(
    "spvit", compress, check=check,
    summary="SPViT: MSA layers into convolutions or skips, FFN widths, under a MACs target",
    paper="Pruning Self-attentions into Convolutional Layers in Single Path (TPAMI 2024, "
          "arXiv:2111.11802); github.com/ziplab/SPViT",
    rules=(("spvit.target_ratio", FRACTION), ("spvit.tolerance", FRACTION),
           ("spvit.budget_weight", validate.number(0)),
           ("spvit.budget_scale", validate.number(0, lo_open=True)),
           ("spvit.alpha", validate.number(0, lo_open=True)), ("spvit.ffn_group", POSITIVE),
           ("spvit.temperature", validate.number(0, lo_open=True)),
           ("spvit.eval_every", POSITIVE),
           ("spvit.finetune_from", validate.choice("search", "original")),
           ("spvit.stop", validate.choice("first", "end")),
           ("spvit.swin_conv", validate.choice("window", "grid")),
           ("spvit.lambda_preset", validate.choice("", "deit_tiny", "deit_small", "deit_base",
                                                   "swin_tiny", "swin_small", "swin_base"))),
    phases=("search.train", "finetune.train"),
    outputs=frozenset({"search", "pruned", "arch.png"}),
    added_defaults={"spvit.swin_conv": "window"})

