"""csa_jax: CSA visual re-ranking (Ouyang et al., NeurIPS 2021) in JAX/Flax.

Shapes in names: B batch, N tokens, K candidates, L anchors, C descriptor size, D hidden size,
Q queries, T ranked list length. Rankings are queries-first, (Q, T) arrays of database indices,
best first. The method as implemented: docs/method.md.

Two kinds of function. Pure functions (``core/``) take and return jax arrays, take the
parameters and the config separately, and can be jitted, vmapped and differentiated. Host
drivers check their inputs (``InputError`` on bad ones), batch the work, build device meshes and
return numpy; each takes the model as ``model``, right after the data, and reads the anchors L
from ``model.cfg.anchors``.

Pure functions (the model):
- ``ModelConfig``: the re-ranker's hyper-parameters (paper defaults); ``CSA``: the Flax module.
- ``init_params(cfg, rng) -> params``.
- ``rerank_scores(params, aff_BxNxL, cfg) -> (B, N-1)``: jitted; cosine of refined tokens 1..
  to token 0, the scores of one affinity batch.
- ``training_outputs(params, aff_BxNxL, cfg, rng=None) -> (logits_BxN, mse)``.
- ``csa_loss(logits_BxN, targets_BxN, mse, alpha) -> (loss, {'contrastive', 'mse'})``,
  ``contrastive_loss``.
- ``rerank_affinity(q_QxC, db_NxC, top_QxT, K, L) -> (Q, K+1, L)``;
  ``training_affinity(feats_NxC, nbrs_NxM, clusters_N, idx_B, K, L) -> ((B, K, L), (B, K))``.
- ``l2_normalize(x, axis=-1)``: the one normaliser (numpy or jax arrays).
- ``chunked_attention(q, k, v, rng=None, rate=0.0, *, scale=None)``: flash-style
  softmax(scale q k^T) v over (B, N, H, d) (scale None: d**-0.5, as
  ``jax.nn.dot_product_attention``) with its own VJP, no N x N tensor (``ModelConfig.attention``
  picks it or XLA's).

Host drivers (retrieval and evaluation):
- ``Model(params, cfg)``: how a model is passed to them (a plain ``(params, cfg)`` works too).
- ``top_k_search(q_QxC, db, T) -> (scores_QxT, idx_QxT)``: exact blocked search with a running
  top-T (on accelerators on device; on CPU XLA dots and a numpy merge), memmap ok.
- ``rerank_shortlist(q_QxC, db, top_QxT, model, K) -> (ids_QxT, scores_QxK)``: a given
  first-round list with its top-K re-ordered by CSA, batched and sharded.
- ``search_and_rerank(q_QxC, db, model, K, T=None) -> (ids_QxT, scores_QxT)``: a user's
  retrieval, searched and re-ranked (no ground truth).
- ``check_first_round(ids_QxT, n_db, K, L, who)``: the rule any engine's first round keeps
  (-1 only as trailing padding, ids in [0, N), distinct, max(K, L-1) per row);
  ``faiss_first_round(q_QxC, db, T, index_factory) -> ids_QxT`` and ``build_faiss_index``: an
  approximate first round by FAISS (the faiss extra). docs/first_round.md.
- ``evaluate(q_QxC, db, gnd, model=None, K=1024)``: first round and CSA, exact revisited mAP
  over the database.
- ``revisited_map(ranks_QxT, gnd)``, ``revisited_map_from_scores(scores_QxN, gnd, top_QxK)``:
  numpy scoring of rankings.

Checkpoints and training:
- ``params_from_torch_state_dict(sd, heads) -> (params, cfg)``, ``params_to_torch_state_dict``,
  ``load_torch_checkpoint(path, heads) -> (params, cfg)``: original checkpoints, no torch needed.
- ``load_model(path) -> Model`` (.pth, .npz or .safetensors export, or workdir), ``save_export``
  (the format by suffix), ``convert_model(src, dst)`` (any of them to any other, bit for bit).
- ``csa_jax.train.loop.train(config, workdir, resume=False) -> TrainResult``; configs from
  ``csa_jax.configs`` (``configs.load('tiny')``).

Deprecated, kept importable (CHANGELOG.md): ``csa_rerank(params, cfg, q, db, top, K, L)``, use
``rerank_shortlist``; ``rerank(q, db, model, K, T)``, use ``search_and_rerank``.
"""

from csa_jax.core.affinity import rerank_affinity
from csa_jax.core.chunked_attention import chunked_attention
from csa_jax.core.affinity import training_affinity
from csa_jax.core.config import Model
from csa_jax.core.config import ModelConfig
from csa_jax.core.forward import init_params
from csa_jax.core.forward import rerank_scores
from csa_jax.core.forward import training_outputs
from csa_jax.core.losses import contrastive_loss
from csa_jax.core.losses import csa_loss
from csa_jax.core.model import CSA
from csa_jax.core.normalize import l2_normalize
from csa_jax.errors import InputError
from csa_jax.evaluation.evaluate import evaluate
from csa_jax.evaluation.revisited import revisited_map
from csa_jax.evaluation.revisited import revisited_map_from_scores
from csa_jax.interop.convert import convert_model
from csa_jax.interop.export import load_model
from csa_jax.interop.export import save_export
from csa_jax.interop.pth import load_torch_checkpoint
from csa_jax.interop.state_dict import params_from_torch_state_dict
from csa_jax.interop.state_dict import params_to_torch_state_dict
from csa_jax.retrieval.faiss_search import build_faiss_index
from csa_jax.retrieval.faiss_search import faiss_first_round
from csa_jax.retrieval.first_round import check_first_round
from csa_jax.retrieval.rerank import csa_rerank
from csa_jax.retrieval.rerank import rerank_shortlist
from csa_jax.retrieval.rerank import search_and_rerank
from csa_jax.retrieval.search import top_k_search
from csa_jax.retrieval.user_rerank import rerank

__version__ = "0.1.0"


__all__ = (
    "CSA",
    "InputError",
    "Model",
    "ModelConfig",
    "build_faiss_index",
    "check_first_round",
    "chunked_attention",
    "contrastive_loss",
    "convert_model",
    "csa_loss",
    "csa_rerank",
    "evaluate",
    "faiss_first_round",
    "init_params",
    "l2_normalize",
    "load_model",
    "load_torch_checkpoint",
    "params_from_torch_state_dict",
    "params_to_torch_state_dict",
    "rerank",
    "rerank_affinity",
    "rerank_scores",
    "rerank_shortlist",
    "revisited_map",
    "revisited_map_from_scores",
    "save_export",
    "search_and_rerank",
    "top_k_search",
    "training_affinity",
    "training_outputs",
)
