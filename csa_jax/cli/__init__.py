"""The ``csa-jax`` command: argparse and printing over library functions, one module per command."""
