"""Readers and validation for the data layouts users already have (docs/method.md section 6).

A facade over the modules that hold them, so callers import one place:

- ``containers``: format told by content, ``load_container``, ``pick``, ``describe``;
- ``descriptors``: ``as_descriptors``, ``load_descriptors``, ``load_r1m``, ``load_large``,
  ``scan_rows``;
- ``ground_truth``: gnd files and test sets (``load_gnd``, ``load_test_set``, ...);
- ``annotations``: the rSfM120k training annotations;
- ``index_lists``: index and name lists (``as_indices``, ``as_names``, ``load_names``);
- ``regular_file``: the one way a user's file is opened (regular files only, never blocking,
  text and JSON files at most ``MAX_TEXT_FILE_BYTES``).

Every reader accepts the original pickles (through ``safe_pickle``: data only, never code) and
the same content as ``.npy`` / ``.npz`` / ``.json``. Everything a reader returns has been checked,
and any problem is an ``InputError`` whose one line names the file, the field, what was expected
and what was found (the row, for a bad descriptor).
"""

from __future__ import annotations

from csa_jax.data.annotations import load_annotations
from csa_jax.data.containers import describe, file_format, load_container, pick
from csa_jax.data.descriptors import (NORM_TOL, as_descriptors, load_descriptors, load_large,
                                      load_r1m, scan_rows)
from csa_jax.data.ground_truth import (check_gnd_range, gnd_names, load_gnd, load_test_files,
                                       load_test_set, parse_gnd)
from csa_jax.data.index_lists import as_indices, as_names

__all__ = [
    "NORM_TOL", "as_descriptors", "as_indices", "as_names", "check_gnd_range", "describe",
    "file_format", "gnd_names", "load_annotations", "load_container", "load_descriptors",
    "load_gnd", "load_large", "load_r1m", "load_test_files", "load_test_set", "parse_gnd", "pick",
    "scan_rows",
]
