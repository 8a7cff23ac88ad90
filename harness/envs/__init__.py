"""Environments: the Python environments cells run in, built on demand, cached and reused.

``default`` is the environment the harness runs in. Any other one is declared by a plugin (an ``environment``
mapping on its loader, model family or backend object), by a suite's loader or backend variant
(``[loaders.NAME] environment = {...}``) or by a suite (``[environments.NAME]``, picked per cell by the matrix axis
``environment``). It is built once into ``$HARNESS_ENVS/NAME-HASH`` with uv (pip's index settings translated),
else venv + pip. One that keeps the default environment's torch is a *layer*: only what it changes is installed.
Its cells run under its interpreter, which also answers whether they can run. See docs/environments.md.

Modules, each depending only on those before it: :mod:`~harness.envs.spec` (declarations, what goes in, the hash),
:mod:`~harness.envs.installer` (uv and pip settings), :mod:`~harness.envs.layers` (the default environment beneath
a layer, a built folder's state), :mod:`~harness.envs.build`, :mod:`~harness.envs.placement` (which interpreter runs
a cell) and :mod:`~harness.envs.cli` (``harness envs``).
"""
