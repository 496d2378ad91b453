"""Accuracy-vs-MACs plot as a PNG, drawn with Pillow (no plotting dependency)."""

from __future__ import annotations

from typing import Any, Sequence

from PIL import Image, ImageDraw


def accuracy_vs_macs(path: str, dense: dict[str, Any], family: Sequence[dict[str, Any]],
                     baseline: Sequence[dict[str, Any]], size=(720, 480),
                     searched: Sequence[dict[str, Any]] = ()) -> str:
  """DC-ViT family (blue line), searched family (green line), PRACTISE (red squares), dense
  (black), on MMACs × accuracy %; ± `accuracy_std` as error bars where rows carry it."""
  w, h = size
  left, right, top, bottom = 70, 20, 30, 50
  pts = [dense] + list(family) + list(baseline) + list(searched)
  xs = [p["macs"] / 1e6 for p in pts]
  ys = [100 * (p["accuracy"] + s * p.get("accuracy_std", 0.0)) for p in pts for s in (-1, 1)]
  x0, x1 = min(xs) * 0.95, max(xs) * 1.02
  y0, y1 = min(ys) - 1.0, max(ys) + 1.0

  def to_px(m, a):
    return (left + (m / 1e6 - x0) / (x1 - x0) * (w - left - right),
            h - bottom - (100 * a - y0) / (y1 - y0) * (h - top - bottom))

  img = Image.new("RGB", size, "white")
  d = ImageDraw.Draw(img)
  d.rectangle([left, top, w - right, h - bottom], outline="black")
  for i in range(6):
    xv, yv = x0 + i * (x1 - x0) / 5, y0 + i * (y1 - y0) / 5
    px, _ = to_px(xv * 1e6, 0)
    _, py = to_px(0, yv / 100)
    d.line([px, h - bottom, px, h - bottom + 5], fill="black")
    d.text((px - 15, h - bottom + 8), f"{xv:.2f}", fill="black")
    d.line([left - 5, py, left, py], fill="black")
    d.text((5, py - 6), f"{yv:.1f}%", fill="black")
  d.text((w // 2 - 40, h - 20), "MACs (M) per image", fill="black")
  d.text((left, 8), "test accuracy vs MACs: DC-ViT family (blue), searched (green), PRACTISE "
         "(red), dense (black)", fill="black")

  def error_bar(p, colour):
    if p.get("accuracy_std"):
      x, lo = to_px(p["macs"], p["accuracy"] - p["accuracy_std"])
      _, hi = to_px(p["macs"], p["accuracy"] + p["accuracy_std"])
      d.line([x, lo, x, hi], fill=colour, width=1)
      d.line([x - 4, lo, x + 4, lo], fill=colour)
      d.line([x - 4, hi, x + 4, hi], fill=colour)

  for rows, colour in ((family, "blue"), (searched, "green")):
    fam = sorted(rows, key=lambda p: p["macs"])
    line = [to_px(p["macs"], p["accuracy"]) for p in fam]
    if len(line) > 1:
      d.line(line, fill=colour, width=2)
    for p, (x, y) in zip(fam, line):
      error_bar(p, colour)
      d.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour)
  for p in baseline:
    error_bar(p, "red")
    x, y = to_px(p["macs"], p["accuracy"])
    d.rectangle([x - 5, y - 5, x + 5, y + 5], fill="red")
  x, y = to_px(dense["macs"], dense["accuracy"])
  d.ellipse([x - 5, y - 5, x + 5, y + 5], fill="black")
  img.save(path)
  return path


OP_COLOURS = {"msa": (31, 119, 180), "conv3": (255, 127, 14), "conv1": (44, 160, 44),
              "none": (200, 200, 200), "norm": (170, 170, 170)}


def spvit_search(path: str, dense, arch, history: Sequence[dict[str, Any]], target: float,
                 size=(900, 420)) -> str:
  """SPViT's chosen architecture (left: per block the op kept in the attention slot, coloured,
  and the kept FFN width as a bar over the dense width, as in the paper's Fig. 3) and the
  derived architectures' MACs ratio over the search steps (right, target dashed)."""
  w, h = size
  img = Image.new("RGB", size, "white")
  d = ImageDraw.Draw(img)
  # Left panel: blocks.
  left, top, bottom, pw = 40, 40, 60, w // 2 - 60
  n = max(arch.depth, 1)
  bw = pw / n
  d.text((left, 10), "chosen architecture: attention op / FFN width", fill="black")
  for i, (b, db) in enumerate(zip(arch.blocks, dense.blocks)):
    x0 = left + i * bw + 2
    frac = b.mlp / db.mlp if db.mlp else 0.0
    y_base = h - bottom
    y_top = y_base - frac * (h - top - bottom - 30)
    d.rectangle([x0, top, x0 + bw - 4, top + 24], fill=OP_COLOURS.get(b.attn, "black"))
    d.text((x0 + 2, top + 6), b.attn, fill="white" if b.attn != "none" else "black")
    d.rectangle([x0, y_top, x0 + bw - 4, y_base], fill=(120, 120, 120))
    d.rectangle([x0, top + 30, x0 + bw - 4, y_base], outline="black")
    d.text((x0 + 2, y_base + 4), f"{i}: {b.mlp}", fill="black")
  # Right panel: MACs ratio over steps.
  rl, rr = w // 2 + 30, w - 20
  d.text((rl, 10), "derived MACs ratio over search steps", fill="black")
  d.rectangle([rl, top, rr, h - bottom], outline="black")
  if history:
    steps = [r["step"] for r in history]
    ratios = [r["macs_ratio"] for r in history]
    s0, s1 = 0, max(steps) or 1
    r0, r1 = min(ratios + [target]) - 0.05, max(ratios + [target, 1.0]) + 0.02

    def px(s, r):
      return (rl + (s - s0) / (s1 - s0) * (rr - rl),
              h - bottom - (r - r0) / (r1 - r0) * (h - top - bottom))

    ty = px(0, target)[1]
    for x in range(int(rl), int(rr), 8):
      d.line([x, ty, x + 4, ty], fill="red")
    pts = [px(s, r) for s, r in zip(steps, ratios)]
    if len(pts) > 1:
      d.line(pts, fill=(31, 119, 180), width=2)
    for x, y in pts:
      d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(31, 119, 180))
    d.text((rl, h - bottom + 4), f"step 0 .. {s1}", fill="black")
    d.text((rl + 4, top + 4), f"{r1:.2f}", fill="black")
    d.text((rl + 4, h - bottom - 14), f"{r0:.2f}  (target {target} red)", fill="black")
  img.save(path)
  return path
