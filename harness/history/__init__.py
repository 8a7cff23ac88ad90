"""``harness history``: benchmark results kept per commit, change points found, a history page, bisect.

- :mod:`.records`: ``record DIR RUN...`` files finished runs under the commit they measured;
- :mod:`.changes`: ``check DIR`` finds persistent shifts per machine, configuration and metric (Apache Otava);
- :mod:`.page`: ``page DIR --out DIR`` writes the static history page;
- :mod:`.bisect`: ``bisect GOOD BAD -- COMMAND`` finds the first commit of a change by interleaved A/B runs;
- :mod:`.cli`: the subcommands.
"""
