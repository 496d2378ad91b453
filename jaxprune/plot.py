"""Accuracy-vs-MACs plot as a PNG, drawn with Pillow (no plotting dependency)."""

from __future__ import annotations

from typing import Any, Sequence

from PIL import Image, ImageDraw


def accuracy_vs_macs(path: str, dense: dict[str, Any], family: Sequence[dict[str, Any]],
                     baseline: Sequence[dict[str, Any]], size=(720, 480)) -> str:
  """DC-ViT family (blue line), PRACTISE (red squares), dense (black), on MMACs × accuracy %."""
  w, h = size
  left, right, top, bottom = 70, 20, 30, 50
  pts = [dense] + list(family) + list(baseline)
  xs = [p["macs"] / 1e6 for p in pts]
  ys = [100 * p["accuracy"] for p in pts]
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
  d.text((left, 8), "test accuracy vs MACs: DC-ViT family (blue), PRACTISE (red), dense (black)",
         fill="black")
  fam = sorted(family, key=lambda p: p["macs"])
  line = [to_px(p["macs"], p["accuracy"]) for p in fam]
  if len(line) > 1:
    d.line(line, fill="blue", width=2)
  for x, y in line:
    d.ellipse([x - 4, y - 4, x + 4, y + 4], fill="blue")
  for p in baseline:
    x, y = to_px(p["macs"], p["accuracy"])
    d.rectangle([x - 5, y - 5, x + 5, y + 5], fill="red")
  x, y = to_px(dense["macs"], dense["accuracy"])
  d.ellipse([x - 5, y - 5, x + 5, y + 5], fill="black")
  img.save(path)
  return path
