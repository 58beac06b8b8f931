"""The paper's studies (ablation, seeds, cross-feature, K/L sweep, held-out validation) and
the re-ranking baselines study."""
