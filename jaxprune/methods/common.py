"""What every method needs: its data, its dense spec, a supervised loss and an evaluator."""

from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxprune.arch import ArchSpec, dense_spec
from jaxprune.atomic import write_json
from jaxprune.data import (Dataset, Subset, TrainBatches, augment, eval_batches,
                           fewshot_indices, load_source, normalise)
from jaxprune.data.randaugment import RandAugment
from jaxprune.data.sources import ArraySplit, augments_on_host
from jaxprune.data.transforms import TrainCrop
from jaxprune.errors import UserError
from jaxprune.train.mesh import check_batch, data_sharding, make_mesh
from jaxprune.models.precision import compute_dtype
from jaxprune.train.step import make_eval_step, soft_cross_entropy


@dataclasses.dataclass
class Setup:
  """The mesh, the data set (train possibly a few-shot subset) and the train batch source."""

  mesh: Any
  data: Dataset
  train: Any  # Split
  batches: TrainBatches
  loading: dict[str, int] = dataclasses.field(default_factory=dict)  # Grain threads / workers


def open_data(config: ml_collections.ConfigDict) -> Dataset:
  """The config's data source, opened (cached per process: `jaxprune.main` opens it before
  the workdir records anything, so a bad source never leaves a config behind)."""
  return load_source(config.data.source, config.model.image_size or None,
                     config.data.tfds_dir or None, config.data.get("skip_corrupt", False),
                     config.data.get("eval_crop", 0.0))


def setup(config: ml_collections.ConfigDict) -> Setup:
  check_batch(config.train.batch_size)
  mesh = make_mesh()
  ds = open_data(config)
  train = ds.train
  if config.data.fewshot:
    train = Subset(ds.train, fewshot_indices(ds.train.labels, config.data.fewshot,
                                             config.data.fewshot_seed,
                                             config.data.fewshot_balanced))
  if config.train.batch_size > len(train) and jax.process_index() == 0:
    print(f"[data] warning: train.batch_size = {config.train.batch_size} is larger than the "
          f"{len(train)} training images: every batch repeats images", flush=True)
  channels = ds.image_shape[2]
  if not config.data.mean:
    raise UserError("data.mean / data.std are empty: resolve them first with "
                    "jaxprune.methods.common.resolve_normalisation(config) (jaxprune.main does)")
  for field in ("mean", "std"):
    if len(config.data[field]) != channels:  # never broadcast: a mismatch is a wrong recipe
      raise UserError(f"data.{field} = {tuple(config.data[field])}: needs {channels} values, "
                      f"one per channel of the {channels}-channel source {ds.name}")
  loading = loader_options(config, ds)
  aug, host = config.data.augment, None
  randaugment = aug.get("randaugment", 0.0)
  if augments_on_host(config.data) and (aug.crop_scale_min < 1 or aug.flip or randaugment):
    fill = tuple(int(round(255 * m)) for m in config.data.mean)
    host = TrainCrop(ds.image_shape[0], aug.crop_scale_min, aug.flip,
                     config.data.get("eval_crop", 0.0),
                     RandAugment(randaugment, aug.get("randaugment_std", 0.5), fill=fill)
                     if randaugment else None)
  batches = TrainBatches(train, config.train.batch_size, config.seed, data_sharding(mesh),
                         host=host, repeats=config.data.augment.get("repeats", 1), **loading)
  return Setup(mesh, ds, train, batches, loading)


DECODE_THREADS = 8  # data.threads = -1 on a source decoded per batch (folder, TFDS)


def loader_options(config: ml_collections.ConfigDict, ds: Dataset) -> dict[str, int]:
  """Grain's threads and worker processes for `ds`: `data.threads` (-1 = none for data held in
  memory, `DECODE_THREADS` for decoded sources) and `data.workers`."""
  threads = config.data.get("threads", -1)
  if threads < 0:
    threads = 0 if isinstance(ds.train, ArraySplit) else DECODE_THREADS
  return {"threads": int(threads), "workers": int(config.data.get("workers", 0))}


# The normalisation of a source whose statistics are known (pixels scaled to [0, 1]).
SOURCE_NORMALISATION = {"mnist5k": ((0.1307,), (0.3081,)),
                        "tfds:imagenet2012": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}


AUTO = ("auto",)  # `--config.data.mean=auto` reads as this one-element tuple
STATISTICS_IMAGES = 10_000  # data.mean=auto: at most this many training images, evenly spaced


def pixel_statistics(split, limit: int = STATISTICS_IMAGES) -> tuple[tuple, tuple]:
  """Per-channel mean and standard deviation of `split`'s pixels scaled to [0, 1], over all its
  images or `limit` of them evenly spaced (float64 sums, read in batches)."""
  n = len(split)
  indices = np.unique(np.linspace(0, n - 1, min(n, limit)).round().astype(np.int64))
  total = total_sq = count = 0.0
  for start in range(0, len(indices), 256):
    images, _ = split.get(indices[start:start + 256])
    x = images.astype(np.float64).reshape(-1, images.shape[-1]) / 255.0
    total, total_sq, count = total + x.sum(0), total_sq + (x**2).sum(0), count + len(x)
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
  return tuple(round(float(m), 6) for m in mean), tuple(round(float(s), 6) for s in std)


def resolve_normalisation(config: ml_collections.ConfigDict) -> str:
  """Fills empty `data.mean`/`data.std` in place, before the workdir records the config: the
  normalisation stored with `model.init_from` (a converted or exported model carries its
  own), else the source's known one; `data.mean=auto data.std=auto` computes them from the
  training split (`pixel_statistics`), so config.json and every exported model record the
  numbers. Returns where the values came from."""
  from jaxprune.export import read_preprocessing
  d = config.data
  if (tuple(d.mean) == AUTO) != (tuple(d.std) == AUTO):
    raise UserError(f"data.mean = {tuple(d.mean)} and data.std = {tuple(d.std)}: 'auto' is for "
                    "both or neither (data.mean=auto data.std=auto)")
  if tuple(d.mean) == AUTO:
    split = open_data(config).train
    d.mean, d.std = pixel_statistics(split)
    return (f"the training split's pixels ({min(len(split), STATISTICS_IMAGES)} of "
            f"{len(split)} images, data.mean=auto)")
  if bool(d.mean) != bool(d.std):
    raise UserError(f"data.mean = {tuple(d.mean)} and data.std = {tuple(d.std)}: set both, or "
                    "neither (then the model's own normalisation is used)")
  if d.mean:
    return "config"
  stored = read_preprocessing(config.model.init_from) if config.model.init_from else None
  if stored:
    d.mean, d.std = tuple(stored["mean"]), tuple(stored["std"])
    return f"model.init_from ({config.model.init_from})"
  if d.source in SOURCE_NORMALISATION:
    d.mean, d.std = SOURCE_NORMALISATION[d.source]
    return f"the {d.source} source"
  raise UserError(
      f"data.mean / data.std are not set, and neither model.init_from nor data.source "
      f"{d.source!r} carries a normalisation: set them (e.g. --config.data.mean='(0.5,)' "
      "--config.data.std='(0.25,)'), or compute them from the training split with "
      "--config.data.mean=auto --config.data.std=auto")


def preprocessing(config: ml_collections.ConfigDict) -> dict[str, list[float]]:
  """What an exported model stores about its input (`save_model(preprocessing=...)`)."""
  return {"mean": list(config.data.mean), "std": list(config.data.std)}


def model_spec(config: ml_collections.ConfigDict, ds: Dataset) -> ArchSpec:
  """The dense spec from `config.model`, sized for the data set's classes and channels."""
  return spec_from_config(config.model, ds.image_shape[0], ds.num_classes, ds.image_shape[2])


def spec_from_config(m: ml_collections.ConfigDict, data_size: int, num_classes: int,
                     in_channels: int) -> ArchSpec:
  """`dense_spec` of the `model` section (0 = the preset's value; image size 0 = `data_size`)."""
  return dense_spec(m.variant, image_size=m.image_size or data_size, patch_size=m.patch_size,
                    num_classes=num_classes, in_channels=in_channels, depth=m.depth or None,
                    width=m.width or None, num_heads=m.num_heads or None,
                    mlp_ratio=m.mlp_ratio or None, distilled=m.distilled,
                    window=m.get("window", 0) or None)


def initial_model(config: ml_collections.ConfigDict, ds: Dataset, spec: ArchSpec):
  """`config.model.init_from` (a saved jaxprune model) when set, else a fresh `spec` model."""
  from jaxprune.export import load
  from jaxprune.models import build_model
  if not config.model.init_from:
    return build_model(spec, seed=config.seed)
  model = load(config.model.init_from)
  got = model.spec
  if (got.num_classes, got.in_channels, got.image_size) != (ds.num_classes, ds.image_shape[2],
                                                             ds.image_shape[0]):
    raise UserError(f"model.init_from = {config.model.init_from!r}: the model takes "
                    f"{got.image_size}px {got.in_channels}-channel images into {got.num_classes} "
                    f"classes, but {ds.name} has {ds.image_shape[0]}px {ds.image_shape[2]}-channel "
                    f"images in {ds.num_classes} classes")
  return model


def total_steps(config: ml_collections.ConfigDict, s: Setup) -> int:
  if config.train.steps:
    return int(config.train.steps)
  return int(config.train.epochs) * s.batches.steps_per_epoch


def split_images(config: ml_collections.ConfigDict, split) -> np.ndarray:
  """Every image of `split` (e.g. the few-shot set), as the model reads them: float, normalised."""
  images, _ = split.get(np.arange(len(split)))
  return np.asarray(normalise(jnp.asarray(images).astype(jnp.float32) / 255.0,
                              config.data.mean, config.data.std))


def preprocess(config: ml_collections.ConfigDict, num_classes: int, batch, key, train: bool):
  """uint8 batch → (normalised float images, soft targets), augmented when `train`."""
  x = batch["image"].astype(jnp.float32) / 255.0
  if train:
    aug = config.data.augment
    if augments_on_host(config.data):  # cropped and flipped on the host already
      aug = ml_collections.ConfigDict(dict(aug.to_dict(), crop_scale_min=1.0, flip=False))
    x, targets = augment(key, x, batch["label"], num_classes, aug, config.data.mean,
                         config.data.std)
  else:
    targets = jax.nn.one_hot(batch["label"], num_classes)
  return normalise(x, config.data.mean, config.data.std), targets


def stochastic_depth(train_cfg: ml_collections.ConfigDict, key: jax.Array) -> dict[str, Any]:
  """The model kwargs of `train.drop_path` (the last block's rate; 0 = off), with a key of its
  own derived from the step's key."""
  rate = train_cfg.get("drop_path", 0.0)
  return {"drop_rate": rate, "drop_key": jax.random.fold_in(key, 0xD0)} if rate > 0 else {}


def remat(train_cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """The model kwargs of `train.remat` (per-block rematerialisation; off: none)."""
  return {"remat": True} if train_cfg.get("remat", False) else {}


def supervised_loss(config: ml_collections.ConfigDict, num_classes: int) -> Callable:
  """Cross-entropy (label smoothing from `train.label_smoothing`) on augmented batches."""

  def loss_fn(model, batch, key):
    x, targets = preprocess(config, num_classes, batch, key, train=True)
    logits = model(x, train=True, **stochastic_depth(config.train, key), **remat(config.train))
    loss = soft_cross_entropy(logits, targets, config.train.label_smoothing)
    acc = jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(targets, -1))
    return loss, {"accuracy": acc}

  return loss_fn


def evaluator(config: ml_collections.ConfigDict, graphdef, s: Setup,
              split: Any | None = None) -> Callable[[Any], dict[str, float]]:
  """`state -> {"accuracy", "loss"}` over the test split (or `split`)."""
  eval_step = make_eval_step(graphdef, s.mesh,
                             compute_dtype(config.train.get("compute_dtype", "float32")))
  split = s.data.test if split is None else split
  mean, std = config.data.mean, config.data.std

  def evaluate(state) -> dict[str, float]:
    totals = {"correct": 0.0, "count": 0.0, "loss_sum": 0.0}
    for batch in eval_batches(split, config.train.batch_size, data_sharding(s.mesh), **s.loading):
      batch = dict(batch, image=normalise(batch["image"], mean, std))
      out = jax.device_get(eval_step(state, batch))
      for k in totals:
        totals[k] += float(out[k])
    return {"accuracy": totals["correct"] / totals["count"],
            "loss": totals["loss_sum"] / totals["count"]}

  return evaluate


EXPORT_SUFFIX = {"stablehlo": "stablehlo", "onnx": "onnx", "hf": "hf"}  # hf: a folder


def export_models(config: ml_collections.ConfigDict, workdir: str,
                  models: dict[str, str]) -> dict[str, str]:
  """Writes each saved model (`{name: model folder}`) in every `export.formats` format to
  `workdir/export/<name>.<format>` (`jaxprune.deploy`); returns {"<name>.<format>": path}."""
  formats = tuple(config.get("export", {}).get("formats", ()))
  if not formats or jax.process_index() != 0:
    return {}
  from jaxprune import deploy
  from jaxprune.export import read_spec
  written = {}
  for name, folder in models.items():
    for fmt in formats:
      path = os.path.join(workdir, "export", f"{name}.{EXPORT_SUFFIX[fmt]}")
      why = deploy.hf_fit(read_spec(folder)) if fmt == "hf" else None
      if why:  # e.g. SPViT's conv blocks: the other formats carry any model
        print(f"[export] {name}: no hf folder ({why})", flush=True)
        continue
      if fmt == "hf" and os.path.isdir(path):  # a rerun writes it again
        shutil.rmtree(path)
      deploy.export_model(folder, fmt, path)
      written[f"{name}.{fmt}"] = path
  print(f"[export] wrote {', '.join(sorted(written.values()))}", flush=True)
  return written


def write_summary(workdir: str, summary: dict[str, Any]) -> str:
  path = os.path.join(workdir, "summary.json")
  if jax.process_index() == 0:
    write_json(path, summary, indent=2, default=lambda o: np.asarray(o).tolist())
  return path


def phase_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """The config one phase trains with: the whole run config, its `train` and `optim` sections
  taken from `config[name]`."""
  out = config.to_dict()
  out["train"], out["optim"] = config[name].train.to_dict(), config[name].optim.to_dict()
  return ml_collections.ConfigDict(out)


def state_of(model) -> dict[str, Any]:
  """The `{"params", "rest"}` view of a model that eval steps take."""
  from jaxprune.models import split_model
  graphdef, weights, gates, rest = split_model(model)
  return graphdef, {"params": {"weights": weights, "gates": gates}, "rest": rest}


def evaluate_model(config: ml_collections.ConfigDict, model, s: Setup) -> dict[str, float]:
  """Test accuracy and loss of `model` in eval mode."""
  from jaxprune.train.step import place
  graphdef, state = state_of(model)
  return evaluator(config, graphdef, s)(place(state, s.mesh))


def distillation_loss(student_logits, teacher_logits, targets, kind: str, weight: float,
                      temperature: float, label_smoothing: float):
  """Cross-entropy on `targets`, mixed with distillation from the teacher's logits.

  kind: `none` (plain CE), `hard` (CE on the teacher's argmax, DeiT-style: (1−w)·CE + w·CE_teacher),
  or `soft` ((1−w)·CE + w·T²·KL(teacher_T ‖ student_T), the KL summed over the batch and the
  classes and divided by B·K as DeiT's `DistillationLoss` does — K× weaker than a mean of
  per-sample KLs). `student_logits` may be a pair (class head, distillation head): the second
  one then learns from the teacher.
  """
  import optax
  cls_logits, dist_logits = (student_logits if isinstance(student_logits, tuple)
                             else (student_logits, student_logits))
  ce = soft_cross_entropy(cls_logits, targets, label_smoothing)
  if kind == "none":
    return ce
  teacher_logits = jax.lax.stop_gradient(teacher_logits)
  if kind == "hard":
    kd = soft_cross_entropy(dist_logits, jax.nn.one_hot(jnp.argmax(teacher_logits, -1),
                                                        teacher_logits.shape[-1]))
  elif kind == "soft":
    t = temperature
    kl = optax.kl_divergence(jax.nn.log_softmax(dist_logits / t),
                             jax.nn.softmax(teacher_logits / t))  # per sample, summed over K
    kd = t * t * jnp.sum(kl) / dist_logits.size
  else:
    raise UserError(f"distill.kind = {kind!r} is unknown; allowed are none, hard, soft")
  return (1 - weight) * ce + weight * kd


def describe(entries: list[tuple[Any, float]], latency_batch: int) -> list[dict[str, Any]]:
  """Summary rows (params, MACs, accuracy, measured latency) of models shown in one table.

  `entries` are (model, accuracy) pairs. Latencies (median ms, batch `latency_batch`) are timed
  interleaved across all the models (`accounting.compare_latency`), so the speed-ups between rows
  do not depend on when each model happened to be timed on a shared machine.
  """
  from jaxprune import accounting
  rounds, iters = 6, 5
  ms = accounting.compare_latency({i: m for i, (m, _) in enumerate(entries)},
                                  batch=latency_batch, rounds=rounds, iters=iters, warmup=3)
  rows = []
  for i, (model, accuracy) in enumerate(entries):
    c = accounting.count(model.spec)
    rows.append({"params": c.params, "macs": c.macs, "accuracy": accuracy, "latency_ms": ms[i],
                 "latency": {"median_ms": ms[i], "batch": latency_batch, "samples": rounds * iters,
                             "timed_with": len(entries)}})
  return rows


def print_table(title: str, rows: list[tuple[str, dict[str, Any]]]) -> None:
  """`| model | params | MACs | accuracy | latency | speed-up |` on process 0."""
  if jax.process_index() != 0:
    return
  base = rows[0][1]["latency_ms"]
  print(f"\n{title}")
  print(f"| {'model':<22} | {'params':>9} | {'MACs':>9} | {'accuracy':>8} | {'latency ms':>10} "
        f"| {'speed-up':>8} |")
  print(f"|{'-' * 24}|{'-' * 10}:|{'-' * 10}:|{'-' * 9}:|{'-' * 11}:|{'-' * 9}:|")
  for name, r in rows:
    acc = f"{100 * r['accuracy']:7.2f}%" + (f" ± {100 * r['accuracy_std']:.2f}"
                                             if "accuracy_std" in r else "")
    print(f"| {name:<22} | {r['params'] / 1e3:8.1f}k | {r['macs'] / 1e6:8.2f}M | "
          f"{acc} | {r['latency_ms']:10.2f} | {base / r['latency_ms']:7.2f}x |")
