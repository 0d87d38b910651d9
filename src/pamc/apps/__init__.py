"""Applications: programs built on the library (the command line, the demo, run tables, seed sweeps).

Nothing under `pamc` outside this package imports it (an import-linter contract in pyproject.toml),
so the library can be used, tested and read without them -- as timm keeps `train.py` and
detectron2 its `tools/` apart from the package.
"""
