"""lorax-bench: an open-loop, multi-adapter load generator for LoRAX- and OpenAI-compatible
servers (the ``lorax-bench`` console script; ``pip install lorax-client[bench]``).

The pieces, one per module: :mod:`~lorax.bench.workload` (the seeded trace),
:mod:`~lorax.bench.prompts` (prompts of a target token count), :mod:`~lorax.bench.protocol`
(request bodies and stream parsing), :mod:`~lorax.bench.runner` (the open-loop driver),
:mod:`~lorax.bench.sweep` (points of a sweep), :mod:`~lorax.bench.metrics` (the numbers),
:mod:`~lorax.bench.report` and :mod:`~lorax.bench.plot` (JSON, table and PNG). Only the plot and
the progress bar need the ``bench`` extra (matplotlib, tqdm), imported when used.
"""
