"""The plots a run writes, drawn with matplotlib (headless: the Agg backend).

- `accuracy_vs_macs`: DC-ViT's family (and the searched family), PRACTISE and the dense model on
  MACs × test accuracy, with ± std error bars over few-shot seeds where the rows carry them.
- `spvit_search`: SPViT's chosen architecture in the layout of the paper's Fig. 3 (per block the
  operation kept in the attention slot and the kept FFN width) beside the derived
  architectures' MACs ratio over the search steps.
"""

from __future__ import annotations

from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, none opened
import matplotlib.patches  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

OP_COLOURS = {"msa": "#1f77b4", "conv3": "#ff7f0e", "conv1": "#2ca02c", "none": "#c8c8c8",
              "norm": "#aaaaaa"}
OP_NAMES = {"msa": "MSA", "conv3": "3×3 conv", "conv1": "1×1 conv", "none": "skip",
            "norm": "skip (LN)"}


def _points(ax, rows, label: str, style: dict[str, Any], line: bool) -> None:
  rows = sorted(rows, key=lambda p: p["macs"])
  if not rows:
    return
  x = [p["macs"] / 1e6 for p in rows]
  y = [100 * p["accuracy"] for p in rows]
  err = [100 * p.get("accuracy_std", 0.0) for p in rows]
  ax.errorbar(x, y, yerr=err if any(err) else None, label=label, capsize=3,
              linestyle="-" if line else "none", **style)


def accuracy_vs_macs(path: str, dense: dict[str, Any], family: Sequence[dict[str, Any]],
                     baseline: Sequence[dict[str, Any]], size=(7.2, 4.8),
                     searched: Sequence[dict[str, Any]] = ()) -> str:
  """DC-ViT family (line), searched family (line), PRACTISE (squares), dense (star) on
  MMACs × accuracy %; ± `accuracy_std` as error bars where rows carry it."""
  fig, ax = plt.subplots(figsize=size, dpi=100)
  _points(ax, family, "DC-ViT family", {"color": "#1f77b4", "marker": "o"}, True)
  _points(ax, searched, "searched structures", {"color": "#2ca02c", "marker": "^"}, True)
  _points(ax, baseline, "PRACTISE", {"color": "#d62728", "marker": "s", "markersize": 7}, False)
  _points(ax, [dense], "dense", {"color": "black", "marker": "*", "markersize": 12}, False)
  ax.set_xlabel("MACs per image (millions)")
  ax.set_ylabel("test accuracy (%)")
  ax.set_title("Accuracy vs MACs")
  ax.grid(alpha=0.3)
  ax.legend(loc="lower right")
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return path


def spvit_search(path: str, dense, arch, history: Sequence[dict[str, Any]], target: float,
                 size=(10.0, 4.2)) -> str:
  """Left, as the paper's Fig. 3: per block the op kept in the attention slot (coloured cell)
  and the kept FFN width (bar, over the dense width). Right: the derived architectures' MACs
  ratio over the search steps, the target dashed."""
  fig, (arch_ax, hist_ax) = plt.subplots(1, 2, figsize=size, dpi=100,
                                         gridspec_kw={"width_ratios": [1.2, 1]})
  blocks = list(zip(arch.blocks, dense.blocks))
  idx = range(len(blocks))
  widths = [b.mlp for b, _ in blocks]
  arch_ax.bar(idx, [d.mlp for _, d in blocks], color="none", edgecolor="black",
              label="dense FFN width")
  arch_ax.bar(idx, widths, color=[OP_COLOURS.get(b.attn, "black") for b, _ in blocks],
              alpha=0.85)
  for i, (b, _) in enumerate(blocks):
    arch_ax.text(i, max(widths + [1]) * 0.02, OP_NAMES.get(b.attn, b.attn), rotation=90,
                 ha="center", va="bottom", fontsize=8)
  handles = [matplotlib.patches.Patch(color=c, label=OP_NAMES[op])
             for op, c in OP_COLOURS.items() if any(b.attn == op for b, _ in blocks)]
  arch_ax.legend(handles=handles + [matplotlib.patches.Patch(
      facecolor="none", edgecolor="black", label="dense FFN width")], fontsize=8,
                 loc="upper right")
  arch_ax.set_xticks(list(idx))
  arch_ax.set_xlabel("block")
  arch_ax.set_ylabel("kept FFN width (bar colour: attention-slot op)")
  arch_ax.set_title("Chosen architecture")
  if history:
    steps = [r["step"] for r in history]
    hist_ax.plot(steps, [r["macs_ratio"] for r in history], marker="o", color="#1f77b4",
                 label="derived architecture")
  hist_ax.axhline(target, color="#d62728", linestyle="--", label=f"target {target:g}")
  hist_ax.set_xlabel("search step")
  hist_ax.set_ylabel("MACs ratio (of dense)")
  hist_ax.set_title("Derived MACs ratio over the search")
  hist_ax.grid(alpha=0.3)
  hist_ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return path
