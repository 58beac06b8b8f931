"""Retrieval around the re-ranker: blocked on-device top-k search, CSA re-ranking of a
database's shortlists (csa_jax's own first round, or any engine's ids: ``first_round``; FAISS:
``faiss_search``), and the classic query-expansion / diffusion baselines."""
