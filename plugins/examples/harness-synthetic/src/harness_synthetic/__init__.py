"""harness-synthetic: an example harness plugin.

- loader ``synthetic``: procedurally generated, class-dependent images made in memory
  (no disk I/O), deterministic by seed: for compute-only benchmarks.
- model family ``tinycnn`` (``tinycnn``, ``tinycnn-wide``): small CNNs for any image size.
- suite ``synthetic-smoke``: both models on the synthetic loader, seconds on a CPU.
"""

__version__ = "0.1.0"
