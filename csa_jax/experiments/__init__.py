"""The demo and ``csa-jax experiment``: the paper's studies and the re-ranking baselines study.

``demo`` (the synthetic benchmark end to end; its sizes, the tiny one included), ``context`` (a
study's settings and base config: ``make_context``), ``datasets`` (its data: ``StudyData``, the
descriptor and test sets of one data root, and the synthetic backbones), ``runs`` (cached training
runs), ``scoring`` (its numbers, through ``evaluation.evaluate``), ``output`` (JSON and figures),
``studies`` / ``heldout`` / ``baseline_study`` (the studies) and ``dispatch`` (one study by name:
``run_study``).
"""
