"""How the ridge head's C is chosen (issue 13): GCV on the training statistics against the validation split.

For each comparison of suite cpu-v2 (seed 0's splits): the pretrained backbone's pooled features of the training,
validation and test images (eval transform), then for every C of the grid the ridge linear probe (unpenalised
bias, ±1 targets) and its train / validation / test accuracy, the C that GCV chooses (`ridge.linear_probe(aug,
"gcv")`) and the one mp-refine's default chooses on validation (`C="val"`), beside a logistic-regression probe
(L-BFGS, standardised features, fixed L2 1e-3) as a reference. Writes ridge_c.json and ridge_c.md.

    OMP_NUM_THREADS=1 FASTRETRAIN_DATA=../shared/data python benchmarks/ridge_c.py \
        flowers5-128-lite0 fashion-mnist-96-lite0 cifar10-96-lite0 fashion-mnist-64-lite0
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import fastretrain as fr  # noqa: E402
from fastretrain import bench, ridge  # noqa: E402
from fastretrain.models import pooled_features  # noqa: E402
from fastretrain.strategies.mp_refine import MPRefine, targets  # noqa: E402
from run import SUITES  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "fast_retrain" / "ridge_c"


@torch.no_grad()
def features(engine, data):
    model = engine.model.eval()
    pairs = [(pooled_features(model, x).double(), y) for x, y in engine.batches(data, train=False)]
    return torch.cat([h for h, _ in pairs]), torch.cat([y for _, y in pairs])


def accuracy(H, y, W, b) -> float:
    return float(((H @ W.T + b).argmax(1) == y).double().mean())


def logistic(Htr, ytr, Hte, yte, c) -> float:
    mu, sd = Htr.mean(0), Htr.std(0) + 1e-6
    W = torch.zeros(Htr.shape[1], c, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(c, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], max_iter=200)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy((Htr - mu) / sd @ W + b, ytr) + 1e-3 * (W ** 2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return float((((Hte - mu) / sd @ W + b).argmax(1) == yte).double().mean())


def run(comp_id: str) -> dict:
    base = next(b for s in SUITES.values() for cid, b, _, _ in s if cid == comp_id)
    cfg = fr.make_config(**{**bench.cell_config(base, "sgdm"), "seed": 0})
    cfg.out = None
    e = fr.build_engine(cfg)
    (Htr, ytr), (Hva, yva), (Hte, yte) = (features(e, d) for d in (e.train_data, e.val_data, e.test_data))
    c = e.data.num_classes
    aug = ridge.accumulate(ridge.RidgeStats.zeros(Htr.shape[1] + 1, c),
                           torch.cat([Htr, torch.ones(len(Htr), 1, dtype=torch.float64)], 1), targets(ytr, c))
    rows = []
    for C in sorted(ridge.GCV_GRID):
        sol, b = ridge.linear_probe(aug, C)
        W = sol.X.T
        rows.append({"C": C, "train_acc": accuracy(Htr, ytr, W, b), "val_acc": accuracy(Hva, yva, W, b),
                     "test_acc": accuracy(Hte, yte, W, b)})
    gcv = ridge.linear_probe(aug, "gcv")[0].C
    chosen = MPRefine(batch_size=64).fit_head(e)["init_head_C"]  # the default: C on validation
    return {"comparison": comp_id, "train_images": len(ytr), "val_images": len(yva), "test_images": len(yte),
            "features": Htr.shape[1], "grid": rows, "gcv_C": gcv, "val_C": chosen,
            "logistic_test_acc": logistic(Htr, ytr, Hte, yte, c)}


def markdown(results: list[dict], env: dict) -> str:
    lines = ["# How the ridge head's C is chosen: GCV against the validation split", "",
             f"Command: `{env['command']}`  ", f"Code: {env['commit']}, torch {env['torch']}, {env['cpu']}", ""]
    for r in results:
        at = {row["C"]: row for row in r["grid"]}
        g, v = at[r["gcv_C"]], at[r["val_C"]]
        lines += [f"## {r['comparison']}", "",
                  f"{r['train_images']} training, {r['val_images']} validation, {r['test_images']} test images; "
                  f"{r['features']} features. GCV chooses C = {r['gcv_C']:g} (test {g['test_acc']:.3f}); the "
                  f"validation split chooses C = {r['val_C']:g} (test {v['test_acc']:.3f}); logistic-regression "
                  f"probe: test {r['logistic_test_acc']:.3f}.", "",
                  "| C | train acc | val acc | test acc |", "|---|---|---|---|"]
        lines += [f"| {row['C']:.3g} | {row['train_acc']:.3f} | {row['val_acc']:.3f} | {row['test_acc']:.3f} |"
                  for row in r["grid"]]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("comparisons", nargs="+")
    args = ap.parse_args()
    torch.manual_seed(0)
    env = {**bench.environment(), "command": "python benchmarks/ridge_c.py " + " ".join(args.comparisons)}
    results = [run(cid) for cid in args.comparisons]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "ridge_c.json").write_text(json.dumps({"environment": env, "results": results}, indent=1))
    (OUT / "ridge_c.md").write_text(markdown(results, env))
    print(markdown(results, env))


if __name__ == "__main__":
    main()
