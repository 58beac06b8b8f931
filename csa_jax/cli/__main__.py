"""``python -m csa_jax.cli``: the same as the ``csa-jax`` command."""

import sys

from csa_jax.cli.main import main

sys.exit(main())
