"""The plots a run writes: matplotlib figures of the expected size, from real and empty data."""

from PIL import Image

from jaxprune import BlockSpec, dense_spec, plot


def test_family_and_architecture_plots(tmp_path):
  dense = {"macs": 11.8e6, "accuracy": 0.968}
  family = [{"macs": m * 1e6, "accuracy": a, "accuracy_std": 0.003}
            for m, a in ((10.6, 0.963), (9.2, 0.951), (7.8, 0.939))]
  practise = [{"macs": 7.9e6, "accuracy": 0.953}]
  png = plot.accuracy_vs_macs(str(tmp_path / "f.png"), dense, family, practise,
                              searched=[{"macs": 7.9e6, "accuracy": 0.955}])
  assert Image.open(png).size == (720, 480)
  spec = dense_spec("test_micro", image_size=16, patch_size=4, num_classes=5, depth=3)
  arch = spec.replace(blocks=(BlockSpec("msa", heads=2, mlp=64), BlockSpec("conv3", conv_dim=16,
                                                                         mlp=32),
                              BlockSpec("none", mlp=0, mlp_bias=True)))
  history = [{"step": 10, "macs_ratio": 0.9}, {"step": 20, "macs_ratio": 0.62}]
  for rows in (history, []):  # a search that logged nothing yet still draws
    png = plot.spvit_search(str(tmp_path / "a.png"), spec, arch, rows, 0.6)
    assert Image.open(png).size == (1000, 420)
