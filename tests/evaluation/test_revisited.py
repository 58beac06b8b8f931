"""revisited_map and the scores path against a plain-loop reading of docs/method.md section 7.

The plain loop below reads rankings as the reference tools store them, (T, Q); csa_jax takes
them queries first, (Q, T), so the comparison transposes once, explicitly."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from csa_jax.errors import InputError
from csa_jax.evaluation import revisited as evaluate

KAPPAS = (1, 5, 10)


def spec_protocol(ranking, positives, ignored, kappas):
  """docs/method.md section 7 as written: delete ignored images, then trapezoid AP and P@k.

  Returns (ap, [p@k]).
  """
  n_pos = len(positives)
  if n_pos == 0:
    return float("nan"), [float("nan")] * len(kappas)
  pos_set, ign_set = set(int(i) for i in positives), set(int(i) for i in ignored)
  adjusted = []  # 0-based rank of each retrieved positive once ignored images are deleted
  kept = 0
  for img in ranking:
    if int(img) in pos_set:
      adjusted.append(kept)
    if int(img) not in ign_set:
      kept += 1
  ap = 0.0
  for j, r in enumerate(adjusted):
    p0 = 1.0 if r == 0 else j / r
    p1 = (j + 1) / (r + 1)
    ap += (p0 + p1) / 2 / n_pos
  prs = []
  for k in kappas:
    if not adjusted:
      prs.append(0.0)
      continue
    kq = min(max(adjusted) + 1, k)
    prs.append(sum(r + 1 <= kq for r in adjusted) / kq)
  return ap, prs


def spec_revisited(ranks_TxQ, gnd, kappas=KAPPAS):
  out = {}
  for name in ("easy", "medium", "hard"):
    aps, prs = [], []
    for q, g in enumerate(gnd):
      e, h, j = (list(np.asarray(g[k]).astype(int).ravel()) for k in ("easy", "hard", "junk"))
      pos, ign = {"easy": (e, j + h), "medium": (e + h, j), "hard": (h, j + e)}[name]
      ap, pr = spec_protocol(ranks_TxQ[:, q], pos, ign, kappas)
      aps.append(ap)
      prs.append(pr)
    aps, prs = np.array(aps), np.array(prs).reshape(len(gnd), len(kappas))
    ok = ~np.isnan(aps)
    out[name] = (np.mean(aps[ok]) if ok.any() else np.nan, aps, prs,
                 prs[ok].mean(0) if ok.any() else np.full(len(kappas), np.nan))
  return out


def random_case(rng):
  """A small random evaluation problem drawn to hit the protocol's corner cases often."""
  n = int(rng.integers(1, 40))
  nq = int(rng.integers(1, 5))
  kind = rng.integers(6)
  t = n if kind == 0 else int(rng.integers(0, n + 1))  # full, or truncated (possibly empty)
  if kind == 5:  # rankings with repeated entries: the reference accepts them, position-wise
    ranks = rng.integers(0, n, (t, nq))
  else:
    ranks = np.stack([rng.permutation(n)[:t] for _ in range(nq)], 1).reshape(t, nq)
  gnd = []
  for _ in range(nq):
    def draw(hi):
      m = int(rng.integers(0, hi + 1))
      a = rng.choice(n, m, replace=bool(rng.integers(2))) if m else np.zeros(0)
      return a.tolist() if rng.integers(2) else np.asarray(a)  # lists or (float) arrays
    g = {"easy": draw(min(n, 6)), "hard": draw(min(n, 6)), "junk": draw(min(n, 8))}
    flavour = rng.integers(8)
    if flavour == 0:  # all junk
      g = {"easy": [], "hard": [], "junk": list(range(n))}
    elif flavour == 1:  # junk also listed as positive
      g["junk"] = list(g["junk"]) + list(g["easy"])[:2] + list(g["hard"])[:1]
    elif flavour == 2:  # empty lists
      g = {"easy": [], "hard": np.zeros(0), "junk": []}
    gnd.append(g)
  return ranks, gnd


def assert_same(got, want, kappas=KAPPAS):
  for name, (m, aps, prs, mp) in want.items():
    r = got[name]
    np.testing.assert_allclose(r["aps"], aps, rtol=1e-12, atol=1e-15, err_msg=name)
    np.testing.assert_allclose(r["prs"], prs, rtol=1e-12, atol=1e-15, err_msg=name)
    np.testing.assert_allclose(r["map"], m, rtol=1e-12, err_msg=name)
    np.testing.assert_allclose(r["mp"], mp, rtol=1e-12, err_msg=name)
    assert r["aps"].shape == (len(aps),) and r["prs"].shape == (len(aps), len(kappas))


def test_matches_spec_on_600_random_cases():
  rng = np.random.default_rng(0)
  seen = {"truncated": 0, "none_retrieved": 0, "no_positives": 0}
  for _ in range(600):
    ranks, gnd = random_case(rng)
    kappas = KAPPAS if rng.integers(4) else (1, 2, 3, 50)
    want = spec_revisited(ranks, gnd, kappas)
    assert_same(evaluate.revisited_map(ranks.T, gnd, kappas), want, kappas)  # (T, Q) -> (Q, T)
    seen["no_positives"] += int(np.isnan(want["medium"][1]).any())
    seen["none_retrieved"] += int((want["medium"][1] == 0).any())
    seen["truncated"] += int(ranks.shape[0] < max(max(np.max(g[k], initial=0) for k in g)
                                                  for g in gnd) + 1)
  assert min(seen.values()) > 30, seen  # the corner cases were actually exercised


def test_known_values():
  # Query 0: positives at ranks 0 and 2 with a junk image between: adjusted ranks 0 and 1.
  ranks = np.array([[5, 7, 6, 1], [0, 1, 2, 3]])  # one row per query
  gnd = [{"easy": [5, 6], "hard": [], "junk": [7]},
         {"easy": [], "hard": [9], "junk": []}]  # hard positive never retrieved
  r = evaluate.revisited_map(ranks, gnd)
  assert r["easy"]["aps"][0] == pytest.approx(1.0)
  assert np.isnan(r["easy"]["aps"][1]) and r["easy"]["map"] == pytest.approx(1.0)
  assert r["hard"]["aps"][1] == 0.0 and np.isnan(r["hard"]["aps"][0])
  np.testing.assert_array_equal(r["hard"]["prs"][1], [0, 0, 0])
  # Medium, query 0 treats nothing extra as junk: same numbers as easy.
  assert r["medium"]["aps"][0] == pytest.approx(1.0)


def test_all_queries_without_positives_give_nan():
  r = evaluate.revisited_map(np.zeros((2, 3), int), [{"easy": [], "hard": [], "junk": [0]}] * 2)
  assert np.isnan(r["medium"]["map"]) and np.isnan(r["medium"]["mp"]).all()


def stable_ranks(scores_QxN, top_QxK=None):
  """(Q, N) full stable ranking, with top_QxK spliced in front."""
  full = np.argsort(-scores_QxN, axis=1, kind="stable")
  if top_QxK is None:
    return full
  return np.stack([np.concatenate([t, f[~np.isin(f, t)]]) for f, t in zip(full, top_QxK)])


@pytest.mark.parametrize("cells", [None, 3])
def test_scores_path_equals_ranks_path_with_ties(cells):
  rng = np.random.default_rng(1)
  for case in range(60):
    n, nq = int(rng.integers(2, 300)), int(rng.integers(1, 4))
    # Few distinct values: many exact ties, which a stable sort breaks by lower index.
    scores = rng.integers(-4, 5, (nq, n)).astype(np.float32) / 4
    if case % 3 == 0:
      scores = rng.standard_normal((nq, n)).astype(np.float32)
    gnd = [{k: rng.choice(n, int(rng.integers(0, min(n, 12))), replace=False)
            for k in ("easy", "hard", "junk")} for _ in range(nq)]
    want = evaluate.revisited_map(stable_ranks(scores), gnd)
    got = evaluate.revisited_map_from_scores(scores, gnd, cells=cells)
    assert_same(got, {p: (w["map"], w["aps"], w["prs"], w["mp"]) for p, w in want.items()})
    # A re-ordered top-K placed first, the rest by score.
    k = int(rng.integers(0, n + 1))
    top = np.stack([rng.permutation(row[:k]) for row in stable_ranks(scores)])
    if case % 4 == 0 and k < n:  # any distinct indices, not only the first-round top-K
      top = np.stack([rng.choice(n, k, replace=False) for _ in range(nq)])
    want = evaluate.revisited_map(stable_ranks(scores, top), gnd)
    got = evaluate.revisited_map_from_scores(scores, gnd, top_QxK=top, cells=cells)
    assert_same(got, {p: (w["map"], w["aps"], w["prs"], w["mp"]) for p, w in want.items()})


def test_scores_path_large_db_and_bfloat16():
  rng = np.random.default_rng(2)
  n, nq = 20000, 3
  s = jnp.asarray(rng.standard_normal((nq, n)), jnp.bfloat16)  # coarse: many ties
  gnd = [{k: rng.choice(n, 40, replace=False) for k in ("easy", "hard", "junk")}
         for _ in range(nq)]
  want = evaluate.revisited_map(stable_ranks(np.asarray(s, np.float32)), gnd)
  got = evaluate.revisited_map_from_scores(s, gnd)
  for p in want:
    np.testing.assert_allclose(got[p]["aps"], want[p]["aps"], rtol=1e-12)


def test_scores_path_rejects_bad_input():
  s = np.zeros((1, 5), np.float32)
  with pytest.raises(ValueError, match="db indices"):
    evaluate.revisited_map_from_scores(s, [{"easy": [5], "hard": [], "junk": []}])
  with pytest.raises(ValueError, match="distinct"):
    evaluate.revisited_map_from_scores(s, [{"easy": [1], "hard": [], "junk": []}],
                                       top_QxK=np.array([[0, 0]]))
  s[0, 2] = np.nan
  with pytest.raises(ValueError, match="finite"):
    evaluate.revisited_map_from_scores(s, [{"easy": [1], "hard": [], "junk": []}])


def test_format_and_json():
  ranks = np.array([[3, 0, 1, 2]])
  gnd = [{"easy": [0], "hard": [2], "junk": [1]}]
  r = evaluate.revisited_map(ranks, gnd)
  text = evaluate.format_results(r, "roxford5k")
  # By hand: E and H have their one positive at adjusted rank 1 (AP 1/4); M has positives at
  # adjusted ranks 1 and 2 (AP (1/2 + 1/2 + 2/3) / 4 = 5/12).
  assert text.splitlines()[0] == ">> roxford5k: mAP E: 25.00, M: 41.67, H: 25.00"
  assert text.splitlines()[1] == (">> roxford5k: mP@1/5/10 E: 0.00/50.00/50.00, "
                                  "M: 0.00/66.67/66.67, H: 0.00/50.00/50.00")
  empty = evaluate.revisited_map(ranks, [{"easy": [], "hard": [3], "junk": []}])
  js = json.loads(json.dumps(evaluate.results_to_json(empty)))
  assert js["easy"]["map"] is None and js["hard"]["map"] == 100.0
  assert js["hard"]["mp"] == {"P@1": 100.0, "P@5": 100.0, "P@10": 100.0}


def test_rankings_are_queries_first():
  gnd = [{"easy": [0], "hard": [], "junk": []}] * 2
  ranks_QxT = np.array([[0, 1, 2], [2, 1, 0]])
  # Row 1 ranks its positive third: AP = (0/2 + 1/3) / 2.
  np.testing.assert_allclose(evaluate.revisited_map(ranks_QxT, gnd)["easy"]["aps"], [1, 1 / 6])
  with pytest.raises(InputError, match=r"^revisited_map: ranks_QxT: expected \(Q=2, T\) "
                     r"rankings, queries first .*transpose.*found shape \(3, 2\)$"):
    evaluate.revisited_map(ranks_QxT.T, gnd)
  with pytest.raises(InputError, match="integer db indices"):
    evaluate.revisited_map(ranks_QxT.astype(float), gnd)


def test_percent_is_the_one_rounding():
  assert evaluate.percent(5 / 12) == 41.67 and isinstance(evaluate.percent(0.5), float)
  np.testing.assert_array_equal(evaluate.percent(np.array([0.123456, np.nan])), [12.35, np.nan])
  assert evaluate.percent(0.123456, None) == pytest.approx(12.3456)
  assert evaluate.PROTOCOLS == ("easy", "medium", "hard")
