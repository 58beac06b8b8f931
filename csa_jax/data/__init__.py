"""The retrieval data a user has, read through ``formats`` and checked for what it means.

``layout`` (the one module that knows a data root's paths), ``descriptors`` (descriptor
matrices, R1M memory-mapped), ``ground_truth`` (gnd files, test sets), ``annotations``
(rSfM120k), ``index_lists`` (index and name lists), ``convert`` (pickles to .npy/.json),
``synthetic`` (the built-in landmark benchmark) and ``tfds_builder`` / ``tfds_reader`` (TFDS
copies of a data root). The training input is ``train.train_set``; neighbour lists are
``retrieval.neighbors``.
"""
