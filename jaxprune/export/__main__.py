"""python -m jaxprune.export MODEL_DIR --format stablehlo|onnx|hf --out PATH (see jaxprune.deploy)."""

import sys

from jaxprune.deploy import main

sys.exit(main())
