"""Reading untrusted files safely: every format a user's file may come in, checked before use.

Regular files only, opened without blocking and bounded before any read (``regular_file``);
``.npy`` / ``.npz`` with sizes, offsets and strides checked against the bytes present
(``npyio``); pickles through a restricted unpickler that builds data only, never runs code
(``safe_pickle`` over ``restricted_unpickler``, ``pickle_globals``, ``pickle_limits``,
``pickle_markers``); ``torch.save`` checkpoints without torch (``torch_file`` with
``torch_globals``); ``.safetensors`` read and written in numpy (``safetensors_file``); and the
format told by content (``containers``). Nothing here knows what the data means: that is
``data`` (descriptors, ground truth) and ``interop`` (checkpoints).
"""
