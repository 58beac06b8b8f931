"""csa_jax: CSA visual re-ranking (Ouyang et al., NeurIPS 2021) in JAX/Flax.

Pure functions over plain pytrees; shapes use B batch, N tokens, K candidates, L anchors,
C descriptor size, D hidden size.

- ``ModelConfig``: the re-ranker's hyper-parameters (paper defaults).
- ``init_params(cfg, rng) -> params``.
- ``rerank_scores(params, aff_BxNxL, cfg) -> (B, N-1)``: cosine of refined tokens 1.. to token 0.
- ``training_outputs(params, aff_BxNxL, cfg, rng=None) -> (logits_BxN, mse)``.
- ``csa_loss(logits_BxN, targets_BxN, mse, alpha) -> (loss, {'contrastive', 'mse'})``.
- ``rerank_affinity(q_QxC, db_NxC, top_QxT, K, L) -> (Q, K+1, L)``.
- ``training_affinity(feats_NxC, nbrs_NxM, clusters_N, idx_B, K, L) -> ((B, K, L), (B, K))``.
- ``params_from_torch_state_dict(sd, heads) -> (params, cfg)``, ``params_to_torch_state_dict``,
  ``load_torch_checkpoint(path, heads) -> (params, cfg)``: original checkpoints, no torch needed.
- ``load_model(path) -> (params, cfg)`` (.pth, .npz export or workdir), ``save_export``.
- ``top_k_search(q_QxC, db, T) -> (scores_QxT, idx_QxT)``: blocked on-device search, memmap ok.
- ``csa_rerank(params, cfg, q_QxC, db_NxC, top_QxT, K, L) -> top_QxT``: batched, sharded.
- ``revisited_map(ranks_TxQ, gnd)``, ``revisited_map_from_scores(scores_QxN, gnd, top_QxK)``.
"""

from csa_jax.core.affinity import rerank_affinity, training_affinity
from csa_jax.core.config import ModelConfig
from csa_jax.errors import InputError
from csa_jax.evaluation.revisited import revisited_map, revisited_map_from_scores
from csa_jax.interop.export import load_model, save_export
from csa_jax.interop.state_dict import params_from_torch_state_dict, params_to_torch_state_dict
from csa_jax.core.losses import contrastive_loss, csa_loss
from csa_jax.core.model import CSA
from csa_jax.core.forward import init_params, rerank_scores, training_outputs
from csa_jax.retrieval.rerank import csa_rerank
from csa_jax.retrieval.search import top_k_search
from csa_jax.interop.pth import load_torch_checkpoint

__version__ = "0.1.0"

__all__ = [
    "CSA", "InputError", "ModelConfig", "contrastive_loss", "csa_loss", "csa_rerank", "init_params",
    "load_model", "load_torch_checkpoint", "save_export", "params_from_torch_state_dict", "params_to_torch_state_dict",
    "rerank_affinity", "rerank_scores", "revisited_map", "revisited_map_from_scores",
    "top_k_search", "training_affinity", "training_outputs",
]
