"""The demo and ``csa-jax experiment``: the paper's studies and the re-ranking baselines study.

``demo`` (the synthetic benchmark end to end), ``context`` (a study's settings and base config),
``bench`` (its data), ``runs`` (cached training runs), ``scoring`` (its numbers, through
``evaluation.evaluate``), ``output`` (JSON and figures), ``studies`` / ``heldout`` /
``baseline_study`` (the studies) and ``dispatch`` (one study by name).
"""
