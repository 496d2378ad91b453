import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_package_folder_has_an_init():
  """A folder of modules without __init__.py is left out of a (non-editable) install."""
  missing = []
  for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, "jaxprune")):
    dirnames[:] = [d for d in dirnames if d != "__pycache__"]
    if any(f.endswith(".py") for f in filenames) and "__init__.py" not in filenames:
      missing.append(os.path.relpath(dirpath, ROOT))
  assert not missing, f"no __init__.py in {missing}"
