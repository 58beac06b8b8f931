"""Retrieval around the re-ranker: blocked on-device top-k search, CSA re-ranking of a
database's shortlists, and the classic query-expansion / diffusion baselines."""
