"""Merges what tools/gpu_check.sh left in one folder into one JSON and one Markdown table.

  python tools/gpu_report.py --out DIR [--total-s S] [--budget-s S]

Reads DIR/stages.jsonl (one line per command the script ran: stage, step, status, exit code,
seconds, budget) and each stage's own output: pytest.log (parity), bench_epoch.json (epoch),
warm/eval_cold.json and warm/eval_warm.json (warm start), demo_results.json and
bf16_fidelity.json (bf16 against float32), bench_gpu.json (bench), profile.json (profile), plus
env.txt and nvidia-smi.txt. Writes
DIR/gpu_check.json ({'stages': {name: {'status', 'seconds', 'budget', 'steps', 'numbers'}},
'total_s', ...}) and DIR/gpu_check.md (a table of the stages, then the bench rows), and prints
nothing but errors. Any file may be missing or malformed (a stage that timed out, a tool of
another version): that stage's numbers then say what was missing, and the rest is still written.
Top-level keys of bench_gpu.json it does not know (its own warm start, a bf16-vs-float32 mAP
row, ...) are copied under the bench's numbers as 'extra'.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

STAGES = ("parity", "epoch", "warm", "fidelity", "bench", "profile")
BENCH_KNOWN = {"schema", "command", "machine", "config", "notes", "rerank", "train", "run",
               "parity", "matmul_peak", "curves"}
_RANK = {"ok": 0, "skipped": 1, "timeout": 2, "stopped": 2, "failed": 3}


def load_json(path: str):
  """The file's JSON, or None when it is missing or not JSON."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def read_text(path: str) -> str:
  try:
    with open(path, errors="replace") as f:
      return f.read()
  except OSError:
    return ""


def read_stages(path: str) -> dict:
  """stages.jsonl grouped by stage: {'status' (the worst step's), 'seconds', 'budget', 'steps'}."""
  out = {}
  for line in read_text(path).splitlines():
    try:
      rec = json.loads(line)
    except ValueError:
      continue
    s = out.setdefault(rec.get("stage", "?"), {"status": "ok", "seconds": 0.0, "budget": 0,
                                                "steps": []})
    s["steps"].append(rec)
    s["seconds"] += float(rec.get("seconds") or 0)
    # The first command's budget is the stage's; each later one gets what is left of it.
    s["budget"] = max(s["budget"], int(rec.get("budget") or 0))
  for s in out.values():
    statuses = [r.get("status", "failed") for r in s["steps"]]
    s["status"] = max(statuses, key=lambda x: _RANK.get(x, 3))
    if all(x == "skipped" for x in statuses):
      s["status"] = "skipped"
    s["seconds"] = round(s["seconds"], 2)
  return out


# ----------------------------------------------------------------------------------------------
# Each stage's key numbers.


def parity_numbers(d: str) -> dict:
  text = read_text(os.path.join(d, "pytest.log"))
  if not text:
    return {"missing": "pytest.log"}
  lines = [x.strip() for x in text.splitlines() if x.strip()]
  counts = {}
  summary = next((x for x in reversed(lines) if re.search(r"\d+ (passed|failed|error)", x)), "")
  for n, what in re.findall(r"(\d+) (passed|failed|errors?|skipped|deselected|xfailed|xpassed)",
                            summary):
    counts["errors" if what.startswith("error") else what] = int(n)
  if not counts:  # killed before its summary: count pytest -q's progress characters
    marks = "".join(m.group(1) for x in lines
                    if (m := re.fullmatch(r"(?:\S+\.py )?([.FEsxX]+)(\s+\[\s*\d+%\])?", x)))
    counts = {k: marks.count(c) for k, c in (("passed", "."), ("failed", "F"), ("errors", "E"),
                                             ("skipped", "s")) if marks.count(c)}
    summary = summary or f"killed before its summary; progress marks {marks!r}"
  return {**counts, "interrupted": "KeyboardInterrupt" in text, "summary": summary.strip("= "),
          "failures": [x for x in lines if x.startswith(("FAILED ", "ERROR "))][:10]}


def epoch_numbers(d: str) -> dict:
  r = load_json(os.path.join(d, "bench_epoch.json"))
  if not isinstance(r, dict):
    return {"missing": "bench_epoch.json"}
  keys = ("status", "mode", "samples", "batch", "K", "L", "steps_per_epoch", "samples_trained",
          "epoch_samples", "wall_s", "generate_s", "startup_s", "first_step_s", "epoch_s",
          "samples_per_s", "step_s", "finish_s", "checkpoint_exists", "export_exists",
          "neighbors_cache_hit", "skipped_steps", "final_loss", "stopped")
  return {k: r[k] for k in keys if k in r}


def _csa_map(e: dict) -> dict | None:
  csa = e.get("csa") if isinstance(e, dict) else None
  if not isinstance(csa, dict):
    return None
  return {p: v.get("map") for p, v in csa.items() if isinstance(v, dict)}


def warm_numbers(d: str, steps: list[dict]) -> dict:
  out = {}
  walls = {r.get("step"): r for r in steps}
  for run in ("cold", "warm"):
    e = load_json(os.path.join(d, "warm", f"eval_{run}.json"))
    rec = walls.get(run, {})
    entry = {"status": rec.get("status", "not run"), "wall_s": rec.get("seconds")}
    if isinstance(e, dict):
      sec = e.get("seconds") or {}
      entry.update(rerank_s=sec.get("rerank"), search_s=sec.get("search"), K=e.get("K"),
                   L=e.get("L"), queries=e.get("queries"), db_images=e.get("db_images"),
                   csa_map=_csa_map(e))
    files = read_text(os.path.join(d, "warm", f"cache_files_after_{run}.txt")).strip()
    if files.isdigit():
      entry["cache_files"] = int(files)
    out[run] = entry
  c, w = out["cold"], out["warm"]
  for key in ("rerank_s", "wall_s"):
    if c.get(key) and w.get(key):
      out[f"{key.removesuffix('_s')}_cold_over_warm"] = round(c[key] / w[key], 2)
  if c.get("csa_map") is not None and w.get("csa_map") is not None:
    out["same_map"] = c["csa_map"] == w["csa_map"]
  return out


def fidelity_numbers(d: str) -> dict:
  demo = load_json(os.path.join(d, "demo_results.json"))
  fid = load_json(os.path.join(d, "bf16_fidelity.json"))
  if not isinstance(demo, dict) and not isinstance(fid, dict):
    return {"missing": "demo_results.json and bf16_fidelity.json"}
  out = {}
  if isinstance(demo, dict):
    f32, bf16 = demo.get("csa"), demo.get("csa_bf16")
    out["demo"] = {"K": ((demo.get("run") or {}).get("config") or {}).get("test_K"),
                   "first_round": demo.get("first_round"), "float32": f32, "bfloat16": bf16}
    if isinstance(f32, dict) and isinstance(bf16, dict):
      out["demo"]["bf16_minus_f32"] = {p: round(bf16[p] - f32[p], 2) for p in f32 if p in bf16}
  if isinstance(fid, dict):
    out["rows"] = [{k: r.get(k) for k in ("K", "float32", "bfloat16", "bf16_minus_f32",
                                          "max_abs_diff")}
                   for r in fid.get("rows") or [] if isinstance(r, dict)]
  return out


def bench_numbers(d: str) -> dict:
  r = load_json(os.path.join(d, "bench_gpu.json"))
  if not isinstance(r, dict):
    return {"missing": "bench_gpu.json"}
  m, mp, par = r.get("machine") or {}, r.get("matmul_peak") or {}, r.get("parity") or {}
  out = {"device": m.get("jax_device"), "backend": m.get("jax_backend"),
         "jax": m.get("jax_version"), "torch": m.get("torch_version"),
         "attention": (r.get("config") or {}).get("attention"),
         "matmul_peak_tflops": {k.removesuffix("_flops"): round(v / 1e12, 2)
                                for k, v in mp.items() if k in ("jax_flops", "torch_flops")
                                and isinstance(v, (int, float))},
         "parity": {k: par.get(k) for k in ("checked", "rerank_max_abs_diff",
                                            "train_loss_max_abs_diff") if k in par},
         "rows": []}
  for part in ("rerank", "train"):
    for row in r.get(part) or []:
      if not isinstance(row, dict):
        continue
      keep = ("impl", "batch", "first_call_s", "steady_median_s", "items_per_s",
              "speedup_vs_torch_eager", "frac_of_matmul_peak", "peak_mem_bytes", "error")
      out["rows"].append({"part": part, **{k: row[k] for k in keep if k in row}})
  extra = {k: v for k, v in r.items() if k not in BENCH_KNOWN}
  if extra:
    out["extra"] = extra
  return out


def profile_numbers(d: str) -> dict:
  r = load_json(os.path.join(d, "profile.json"))
  if not isinstance(r, dict):
    return {"missing": "profile.json"}
  out = {k: r.get(k) for k in ("batch", "K", "first_step_s", "traced_step_s", "busy_ms", "where",
                               "trace_file")}
  out["top_ops"] = (r.get("top_ops") or [])[:8]
  return out


def env_numbers(d: str) -> dict:
  env = read_text(os.path.join(d, "env.txt")).splitlines()
  smi = read_text(os.path.join(d, "nvidia-smi.txt"))
  gpu = re.search(r"^name, driver_version.*\n(.+)$", smi, re.M)
  backend = next((x.split(":", 1)[1].strip() for x in env if x.startswith("jax backend:")), None)
  return {"env": env[:12], "gpu": gpu.group(1).strip() if gpu else None, "jax_backend": backend}


# ----------------------------------------------------------------------------------------------
# The table.


def _f(v, spec=".2f") -> str:
  if isinstance(v, bool) or v is None:
    return "-" if v is None else str(v).lower()
  return format(v, spec) if isinstance(v, (int, float)) else str(v)


def _map3(m) -> str:
  if not isinstance(m, dict):
    return "-"
  return "/".join(_f(m.get(p)) for p in ("easy", "medium", "hard"))


def headline(name: str, n: dict) -> str:
  """One cell of key numbers for a stage."""
  if "missing" in n:
    return f"no {n['missing']}"
  if name == "parity":
    bits = [f"{n.get(k)} {k}" for k in ("passed", "failed", "errors", "skipped") if n.get(k)]
    return ", ".join(bits or ["no tests counted"]) + (" (cut by the budget)"
                                                      if n.get("interrupted") else "")
  if name == "epoch":
    return (f"{n.get('samples_trained')}/{n.get('epoch_samples')} samples; wall "
            f"{_f(n.get('wall_s'), '.1f')} s = start-up {_f(n.get('startup_s'), '.1f')} + first "
            f"step {_f(n.get('first_step_s'), '.1f')} + epoch {_f(n.get('epoch_s'), '.1f')} "
            f"({_f(n.get('samples_per_s'), '.0f')} samples/s) + checkpoint/export "
            f"{_f(n.get('finish_s'), '.1f')}; checkpoint {_f(n.get('checkpoint_exists'))}"
            + (f"; {n['stopped']}" if n.get("stopped") else ""))
  if name == "warm":
    c, w = n.get("cold", {}), n.get("warm", {})
    return (f"re-rank {_f(c.get('rerank_s'))} s cold, {_f(w.get('rerank_s'))} s warm (x"
            f"{_f(n.get('rerank_cold_over_warm'))}); process {_f(c.get('wall_s'), '.1f')} / "
            f"{_f(w.get('wall_s'), '.1f')} s (x{_f(n.get('wall_cold_over_warm'))}); cache files "
            f"{c.get('cache_files', '-')}; same mAP {_f(n.get('same_map'))}")
  if name == "fidelity":
    cells = []
    demo = n.get("demo") or {}
    if demo:
      cells.append(f"demo K={demo.get('K')}: CSA mAP E/M/H float32 {_map3(demo.get('float32'))}, "
                   f"bfloat16 {_map3(demo.get('bfloat16'))}, bf16 - f32 "
                   f"{_map3(demo.get('bf16_minus_f32'))}")
    for r in n.get("rows") or []:
      cells.append(f"K={r.get('K')}: bf16 - f32 {_map3(r.get('bf16_minus_f32'))}")
    return "; ".join(cells) or "no numbers"
  if name == "bench":
    par = n.get("parity", {})
    best = {}
    for r in n.get("rows", []):
      if r.get("items_per_s") and r["impl"].startswith("csa_jax"):
        key = (r["part"], r["batch"])
        if r["items_per_s"] > best.get(key, (0, ""))[0]:
          best[key] = (r["items_per_s"], r["impl"], r.get("speedup_vs_torch_eager"))
    cells = [f"{p} b{b}: {v:.0f}/s {i} x{_f(s)}" for (p, b), (v, i, s) in best.items()]
    return (f"{n.get('device')}; parity {_f(par.get('rerank_max_abs_diff'), '.1e')}; "
            + "; ".join(cells) + ("; extra: " + ", ".join(n["extra"]) if n.get("extra") else ""))
  if name == "profile":
    top = n.get("top_ops") or []
    return (f"step {_f(n.get('traced_step_s'), '.3f')} s traced, busy "
            f"{_f(n.get('busy_ms'), '.1f')} ms; top: "
            + ", ".join(f"{o.get('name', '')[:40]} {_f(o.get('ms'), '.1f')} ms" for o in top[:3]))
  return ""


def markdown(rep: dict) -> str:
  device = (rep["env"].get("gpu") or rep["stages"].get("bench", {}).get("numbers", {}).get("device")
            or rep["env"].get("jax_backend") or "?")
  lines = [f"# GPU check: {device}", "",
           f"total {_f(rep.get('total_s'), '.0f')} s of {_f(rep.get('budget_s'), '.0f')} s", "",
           "| stage | status | seconds | budget | key numbers |", "|---|---|---|---|---|"]
  for name in STAGES:
    s = rep["stages"].get(name)
    if s is None:
      lines.append(f"| {name} | not run | - | - | - |")
      continue
    cell = headline(name, s["numbers"]).replace("|", "/")
    lines.append(f"| {name} | {s['status']} | {_f(s['seconds'], '.1f')} | {s['budget']} | "
                 f"{cell} |")
  rows = rep["stages"].get("bench", {}).get("numbers", {}).get("rows", [])
  if rows:
    lines += ["", "| part | batch | impl | first call s | steady s | items/s | x eager | "
              "% peak | peak mem MiB |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
      if "error" in r:
        lines.append(f"| {r['part']} | {r['batch']} | {r['impl']} | {r['error']} |||||| ")
        continue
      mem = r.get("peak_mem_bytes")
      frac = r.get("frac_of_matmul_peak")
      lines.append(f"| {r['part']} | {r['batch']} | {r['impl']} | {_f(r.get('first_call_s'))} | "
                   f"{_f(r.get('steady_median_s'), '.4f')} | {_f(r.get('items_per_s'), '.1f')} | "
                   f"{_f(r.get('speedup_vs_torch_eager'))} | "
                   f"{_f(100 * frac if frac is not None else None, '.1f')} | "
                   f"{_f(mem / 2**20 if mem is not None else None, '.0f')} |")
  extra = rep["stages"].get("bench", {}).get("numbers", {}).get("extra")
  if extra:
    lines += ["", "bench, other results: `" + json.dumps(extra)[:600] + "`"]
  top = rep["stages"].get("profile", {}).get("numbers", {}).get("top_ops")
  if top:
    lines += ["", "| profile: op | ms | calls |", "|---|---|---|"]
    lines += [f"| `{o.get('name', '')[:80]}` | {_f(o.get('ms'), '.2f')} | {o.get('calls')} |"
              for o in top]
  return "\n".join(lines) + "\n"


def report(d: str, total_s: float | None = None, budget_s: float | None = None) -> dict:
  """The merged report of folder ``d`` (also written to d/gpu_check.json and d/gpu_check.md)."""
  stages = read_stages(os.path.join(d, "stages.jsonl"))
  numbers = {"parity": lambda s: parity_numbers(d), "epoch": lambda s: epoch_numbers(d),
             "warm": lambda s: warm_numbers(d, s["steps"]),
             "fidelity": lambda s: fidelity_numbers(d), "bench": lambda s: bench_numbers(d),
             "profile": lambda s: profile_numbers(d)}
  for name, s in stages.items():
    try:
      s["numbers"] = numbers[name](s) if name in numbers else {}
    except Exception as e:  # noqa: BLE001  (a malformed file: say so, keep the rest)
      s["numbers"] = {"missing": f"readable output ({type(e).__name__}: {e})"}
  # A stage whose command exited 0 but left no results did not work.
  for name, s in stages.items():
    if s["status"] == "ok" and "missing" in s.get("numbers", {}):
      s["status"] = "failed"
  # bench_epoch.py knows why it did not finish (its own timeout, a signal) better than its exit.
  ep = stages.get("epoch", {}).get("numbers", {})
  if stages.get("epoch", {}).get("status") in ("ok", "failed") and ep.get("status") not in (
      None, "ok"):
    stages["epoch"]["status"] = ep["status"]
  rep = {"total_s": total_s, "budget_s": budget_s, "env": env_numbers(d), "stages": stages}
  with open(os.path.join(d, "gpu_check.json"), "w") as f:
    json.dump(rep, f, indent=1, default=str)
    f.write("\n")
  with open(os.path.join(d, "gpu_check.md"), "w") as f:
    f.write(markdown(rep))
  return rep


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True, help="the folder gpu_check.sh wrote")
  p.add_argument("--total-s", type=float, default=None, help="the script's wall time so far")
  p.add_argument("--budget-s", type=float, default=None, help="the script's time budget")
  args = p.parse_args(argv)
  if not os.path.isdir(args.out):
    print(f"gpu_report: {args.out}: no such folder", file=sys.stderr)
    return 2
  report(args.out, args.total_s, args.budget_s)
  return 0


if __name__ == "__main__":
  sys.exit(main())
