"""The harness's built-in plugins (import package ``harness_plugins``).

Each module is an ordinary plugin registered through the ``harness`` entry-point
group, exactly as a third-party package would be.
"""
