"""The course's offline data, installed as the package ``preflab._data``.

pyproject.toml maps this folder onto ``preflab._data`` (``[tool.setuptools.package-dir]``), so a wheel
carries the tiny checkpoints under ``site-packages/preflab/_data/`` and an editable install finds them
here; :mod:`preflab.model` locates them with :mod:`importlib.resources`. See README.md beside this file.
"""
