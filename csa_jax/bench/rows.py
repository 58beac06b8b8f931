"""Result rows of ``csa-jax bench``: one race's timings turned into throughput, FLOP/s, memory.

The table of ``benchmark`` and every point of ``curves`` come from ``result_rows``, so their
columns mean the same thing.
"""

from __future__ import annotations

from csa_jax.bench import contestants as ct


def result_rows(timed: dict, batch: int, flops_per_item: float, top_flops: float,
                **extra) -> list[dict]:
  """One result row per contestant of a race.

  Args:
    timed: ``race.race``'s result, name -> timings or {'error'}.
    batch: queries or samples per call.
    flops_per_item: the cost model's FLOPs of one query or sample (``flops``).
    top_flops: the matmul peak to report the fraction of.
    **extra: fields every row gets (such as K), after impl and batch.

  Returns:
    Rows with impl, batch, the extra fields and the race's fields; a contestant that ran also gets
    compile_s, items_per_s, s_per_item, flops_per_item, achieved_flops, frac_of_matmul_peak,
    speedup_vs_torch_eager (None without PyTorch eager) and mem_per_item_bytes (None when its
    peak memory is unknown).
  """
  rows = []
  eager = timed.get(ct.EAGER, {}).get("steady_median_s")
  for name, r in timed.items():
    row = {"impl": name, "batch": batch, **extra, **r}
    med = r.get("steady_median_s")
    if med:
      row["compile_s"] = max(r["first_call_s"] - med, 0.0)  # the first call's extra cost
      row["items_per_s"] = batch / med
      row["s_per_item"] = med / batch
      row["flops_per_item"] = flops_per_item
      row["achieved_flops"] = flops_per_item * batch / med
      row["frac_of_matmul_peak"] = row["achieved_flops"] / top_flops
      row["speedup_vs_torch_eager"] = eager / med if eager else None
    if "error" not in r:
      mem = r.get("peak_mem_bytes")
      # A call's peak over the items it served: what one more query or sample costs in memory.
      row["mem_per_item_bytes"] = mem / batch if mem is not None else None
    rows.append(row)
  return rows
