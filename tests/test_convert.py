"""Checkpoint import parity: random HF ViT/DeiT → file → jaxprune, logits within 1e-4."""

import os
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxprune import convert, load  # noqa: E402
from jaxprune.errors import UserError  # noqa: E402

CFG = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
           image_size=16, patch_size=4, num_channels=3, num_labels=5)


def _hf_model(kind):
  torch.manual_seed(0)
  if kind == "vit":
    return transformers.ViTForImageClassification(transformers.ViTConfig(**CFG)).eval()
  cls = {"deit": transformers.DeiTForImageClassification,
         "deit_teacher": transformers.DeiTForImageClassificationWithTeacher}[kind]
  return cls(transformers.DeiTConfig(**CFG)).eval()


def _images(n=3):
  return np.random.default_rng(0).normal(size=(n, 16, 16, 3)).astype(np.float32)


def _hf_logits(model, images):
  with torch.no_grad():
    return model(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2))).logits.numpy()


@pytest.mark.parametrize("kind", ["vit", "deit", "deit_teacher"])
def test_hf_parity_through_cli(kind, tmp_path):
  hf = _hf_model(kind)
  hf.save_pretrained(tmp_path / "hf")  # model.safetensors + config.json
  assert convert.main([str(tmp_path / "hf"), "--format", "hf", "--out", str(tmp_path / "out")]) == 0
  model = load(str(tmp_path / "out"))
  assert model.spec.dist_token == (kind != "vit")
  assert model.spec.dist_head == (kind == "deit_teacher")
  images = _images()
  np.testing.assert_allclose(np.asarray(model(images)), _hf_logits(hf, images), atol=1e-4)


def _timm_state_dict(hf, tmp_path):
  """HF (as saved on disk) → timm names, written independently of jaxprune's renaming."""
  from safetensors.numpy import load_file
  hf.save_pretrained(tmp_path / "hf_src")
  sd = load_file(str(tmp_path / "hf_src" / "model.safetensors"))
  out = {"cls_token": sd["vit.embeddings.cls_token"],
         "pos_embed": sd["vit.embeddings.position_embeddings"],
         "patch_embed.proj.weight": sd["vit.embeddings.patch_embeddings.projection.weight"],
         "patch_embed.proj.bias": sd["vit.embeddings.patch_embeddings.projection.bias"],
         "norm.weight": sd["vit.layernorm.weight"], "norm.bias": sd["vit.layernorm.bias"],
         "head.weight": sd["classifier.weight"], "head.bias": sd["classifier.bias"]}
  for i in range(CFG["num_hidden_layers"]):
    p = f"vit.encoder.layer.{i}."
    for s in ("weight", "bias"):
      out[f"blocks.{i}.attn.qkv.{s}"] = np.concatenate(
          [sd[p + f"attention.attention.{n}.{s}"] for n in ("query", "key", "value")])
      out[f"blocks.{i}.attn.proj.{s}"] = sd[p + f"attention.output.dense.{s}"]
      out[f"blocks.{i}.mlp.fc1.{s}"] = sd[p + f"intermediate.dense.{s}"]
      out[f"blocks.{i}.mlp.fc2.{s}"] = sd[p + f"output.dense.{s}"]
      out[f"blocks.{i}.norm1.{s}"] = sd[p + f"layernorm_before.{s}"]
      out[f"blocks.{i}.norm2.{s}"] = sd[p + f"layernorm_after.{s}"]
  return out


@pytest.mark.parametrize("ext", [".pth", ".npz", ".safetensors"])
def test_timm_layout_parity(ext, tmp_path):
  hf = _hf_model("vit")
  sd = _timm_state_dict(hf, tmp_path)
  path = str(tmp_path / f"model{ext}")
  if ext == ".pth":
    torch.save({"model": {k: torch.from_numpy(v) for k, v in sd.items()}}, path)
  elif ext == ".npz":
    np.savez(path, **sd)
  else:
    from safetensors.numpy import save_file
    save_file(sd, path)
  # HF's LayerNorm eps is 1e-12; a timm checkpoint does not say, so pass it.
  model = convert.import_checkpoint(path, "timm", num_heads=2, ln_eps=1e-12)
  images = _images()
  np.testing.assert_allclose(np.asarray(model(images)), _hf_logits(hf, images), atol=1e-4)


def test_big_vision_parity(tmp_path):
  hf = _hf_model("vit")
  t = _timm_state_dict(hf, tmp_path)
  c, h = CFG["hidden_size"], CFG["num_attention_heads"]
  bv = {"embedding/kernel": t["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
        "embedding/bias": t["patch_embed.proj.bias"], "cls": t["cls_token"],
        "Transformer/posembed_input/pos_embedding": t["pos_embed"],
        "Transformer/encoder_norm/scale": t["norm.weight"],
        "Transformer/encoder_norm/bias": t["norm.bias"],
        "head/kernel": t["head.weight"].T, "head/bias": t["head.bias"]}
  for i in range(CFG["num_hidden_layers"]):
    p, b = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
    q, k, v = np.split(t[b + "attn.qkv.weight"], 3)
    qb, kb, vb = np.split(t[b + "attn.qkv.bias"], 3)
    for name, w, bias in (("query", q, qb), ("key", k, kb), ("value", v, vb)):
      bv[p + f"MultiHeadDotProductAttention_1/{name}/kernel"] = w.T.reshape(c, h, c // h)
      bv[p + f"MultiHeadDotProductAttention_1/{name}/bias"] = bias.reshape(h, c // h)
    bv[p + "MultiHeadDotProductAttention_1/out/kernel"] = t[b + "attn.proj.weight"].T.reshape(
        h, c // h, c)
    bv[p + "MultiHeadDotProductAttention_1/out/bias"] = t[b + "attn.proj.bias"]
    for j, n in ((0, "LayerNorm_0"), (1, "LayerNorm_2")):
      bv[p + f"{n}/scale"] = t[b + f"norm{j + 1}.weight"]
      bv[p + f"{n}/bias"] = t[b + f"norm{j + 1}.bias"]
    for j in (0, 1):
      bv[p + f"MlpBlock_3/Dense_{j}/kernel"] = t[b + f"mlp.fc{j + 1}.weight"].T
      bv[p + f"MlpBlock_3/Dense_{j}/bias"] = t[b + f"mlp.fc{j + 1}.bias"]
  np.savez(tmp_path / "bv.npz", **bv)
  model = convert.import_checkpoint(str(tmp_path / "bv.npz"), "big_vision", ln_eps=1e-12)
  assert model.spec.num_heads == h  # read from the kernel shapes
  images = _images()
  np.testing.assert_allclose(np.asarray(model(images)), _hf_logits(hf, images), atol=1e-4)


@pytest.mark.parametrize("kind", ["vit", "deit_teacher"])
def test_hf_in_memory_state_dict_parity(kind):
  """transformers>=5 names its in-memory keys differently from its files; both import."""
  hf = _hf_model(kind)
  sd = {k: v.numpy() for k, v in hf.state_dict().items()}
  model = convert.import_checkpoint(sd, "auto", num_heads=2)
  images = _images()
  np.testing.assert_allclose(np.asarray(model(images)), _hf_logits(hf, images), atol=1e-4)


def test_missing_and_unexpected_keys_are_listed(tmp_path):
  sd = _timm_state_dict(_hf_model("vit"), tmp_path)
  broken = dict(sd)
  del broken["blocks.1.mlp.fc2.bias"]
  with pytest.raises(UserError, match="missing key 'blocks.1.mlp.fc2.bias'"):
    convert.import_checkpoint(broken, "timm", num_heads=2)
  extra = dict(sd, **{"fc_norm.weight": np.ones(32, np.float32)})
  with pytest.raises(UserError, match=r"1 unexpected keys: \['fc_norm.weight'\]"):
    convert.import_checkpoint(extra, "timm", num_heads=2)


def test_position_embedding_resized_for_new_image_size(tmp_path):
  hf = _hf_model("vit")
  model = convert.import_checkpoint(_timm_state_dict(hf, tmp_path), "timm", num_heads=2, image_size=24)
  assert model.spec.image_size == 24 and model.pos_embed[...].shape == (1, 1 + 36, 32)
  np.testing.assert_allclose(model.pos_embed[...][0, 0],
                             hf.vit.embeddings.position_embeddings[0, 0].detach().numpy())
  out = model(np.zeros((1, 24, 24, 3), np.float32))
  assert out.shape == (1, 5)


def test_cli_error_is_one_line(tmp_path, capsys):
  assert convert.main([str(tmp_path / "nope.safetensors"), "--out", str(tmp_path / "o")]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: checkpoint") and "does not exist" in err and "\n" not in err


def test_bare_weights_need_the_head_count(tmp_path):
  """Issue 10, case 5: heads were guessed as width // 64 (wrong for this width-32/2-head ViT)."""
  from safetensors.numpy import save_file
  save_file(_timm_state_dict(_hf_model("vit"), tmp_path), str(tmp_path / "w.safetensors"))
  with pytest.raises(UserError, match="number of attention heads cannot be read from these "
                                      "weights .*pass --num-heads"):
    convert.import_checkpoint(str(tmp_path / "w.safetensors"), "timm")
  with pytest.raises(UserError, match="--num-heads 3: must be >= 1 and divide the width 32"):
    convert.import_checkpoint(str(tmp_path / "w.safetensors"), "timm", num_heads=3)
  assert convert.import_checkpoint(str(tmp_path / "w.safetensors"), "timm",
                                   num_heads=2).spec.num_heads == 2


def _object_npz(path):
  np.savez(path, a=np.array([{"x": 1}], dtype=object))


def _malicious_pth(path):
  class Boom:
    def __reduce__(self):
      return (os.system, ("touch " + str(path) + ".pwned",))
  torch.save({"model": Boom()}, path)


@pytest.mark.parametrize("name, make, expected", [
    ("garbage.safetensors", lambda p: p.write_bytes(b"\x00garbage" * 10), "cannot be read"),
    ("trunc.safetensors", "truncate", "cannot be read"),
    ("obj.npz", _object_npz, "cannot be read .*(pickle|Object arrays)"),
    ("bad.pth", _malicious_pth, "torch refused it with weights_only=True"),
    ("garbage.pth", lambda p: p.write_bytes(b"not a zip"), "cannot be read"),
])
def test_damaged_or_hostile_files_are_one_line_errors(tmp_path, capsys, name, make, expected):
  path = tmp_path / name
  if make == "truncate":
    from safetensors.numpy import save_file
    save_file({"a": np.ones((64, 64), np.float32)}, str(path))
    path.write_bytes(path.read_bytes()[:500])
  else:
    make(path)
  assert convert.main([str(path), "--num-heads", "2", "--out", str(tmp_path / "o")]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
  assert re.search(expected, err), err
  assert not os.path.exists(str(path) + ".pwned")


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
  hf = _hf_model("vit")
  hf.save_pretrained(tmp_path / "hf")
  capsys.readouterr()  # transformers' save progress bar
  (tmp_path / "out").write_text("x")
  assert convert.main([str(tmp_path / "hf"), "--out", str(tmp_path / "out")]) == 2
  err = capsys.readouterr().err
  assert f"error: --out {tmp_path / 'out'} is a file" in err and err.count("\n") == 1
  assert (tmp_path / "out").read_text() == "x"


def test_out_is_never_written_over(tmp_path, capsys):  # issue 26, case 2
  """A folder holding anything jaxprune did not write is refused in one line and left as it
  was (a user's file inside `state/` used to vanish, rc 0); an earlier model there is replaced
  only with --overwrite."""
  hf = _hf_model("vit")
  hf.save_pretrained(tmp_path / "hf")
  capsys.readouterr()
  user = tmp_path / "mine"
  (user / "state").mkdir(parents=True)
  (user / "state" / "notes.txt").write_text("mine")
  (user / "arch.json").write_text("{}")
  (user / "data.csv").write_text("1,2")
  for extra in ([], ["--overwrite"]):
    assert convert.main([str(tmp_path / "hf"), "--out", str(user), *extra]) == 2
    err = capsys.readouterr().err
    assert "holds files jaxprune did not write (data.csv)" in err and err.count("\n") == 1
  assert (user / "state" / "notes.txt").read_text() == "mine"
  assert (user / "arch.json").read_text() == "{}" and (user / "data.csv").read_text() == "1,2"
  (user / "data.csv").unlink()  # only jaxprune's names left, but not a model jaxprune wrote
  assert convert.main([str(tmp_path / "hf"), "--out", str(user), "--overwrite"]) == 2
  assert "holds files jaxprune did not write (arch.json, state)" in capsys.readouterr().err
  assert (user / "state" / "notes.txt").read_text() == "mine"
  out = tmp_path / "model"
  assert convert.main([str(tmp_path / "hf"), "--out", str(out)]) == 0
  assert convert.main([str(tmp_path / "hf"), "--out", str(out)]) == 2
  assert "already holds a model; pass --overwrite" in capsys.readouterr().err
  assert convert.main([str(tmp_path / "hf"), "--out", str(out), "--overwrite"]) == 0
  assert load(str(out)).spec.depth == 2
