"""The README's one-screen API example runs as written, with no deprecated name in it."""

import pathlib
import re
import warnings

import numpy as np

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_api_example_runs_and_its_two_drivers_agree():
  code = re.search(r"## Python API in one screen\n\n```python\n(.*?)```", README.read_text(),
                   re.S).group(1)
  ns = {}
  with warnings.catch_warnings():
    warnings.simplefilter("error", DeprecationWarning)
    exec(compile(code, "README.md", "exec"), ns)  # noqa: S102  (our own README)
  assert ns["ids_QxT"].shape == (4, 100) and ns["csa_QxK"].shape == (4, 32)
  # search_and_rerank's first K ids are rerank_shortlist's on the same first round.
  np.testing.assert_array_equal(ns["ids_QxT"][:, :32], ns["new_QxT"][:, :32])
  # The pure function's scores are the driver's, up to the re-ordering.
  np.testing.assert_allclose(np.sort(np.asarray(ns["s_QxK"]), 1), np.sort(ns["csa_QxK"], 1),
                             atol=1e-5)
