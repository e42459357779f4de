"""Reproduction: EMO (earth mover's loss with an embedding cost) spreads less mass on unrelated classes.

Post: "EMO:基于最优传输思想设计的分类损失函数" (2023-10-13, kexue.fm/archives/9797).

Protocol (spec ``emo-loss``, part A): a synthetic "synonym" task. 12 groups x 4 synonyms = 48 classes of
points in R^20: group centres ``3 N(0, I)``, class centres = group centre + ``0.7 N(0, I)``, samples = class
centre + ``N(0, I)``; 6000 training and 3000 test points. 30% of the training labels are replaced by a class
of a *different* group (distant noise); test labels are clean. The fixed cost embeddings are
``e_c = onehot(group(c)) + 0.3 N(0, I_12)`` (cosine ~0.9 within a group, ~0 across). An MLP 20-256-256-48 is
trained with Adam (lr 1e-3, batch 128) under MLE (cross-entropy) and under :func:`kexue.losses.emo_loss`
(the official combination ``0.5 (mle + sg(mle / emo) emo)``; EMO alone in full mode). Measured on the clean
test set: top-1 accuracy, group accuracy, expected transport cost ``E[sum_i p_i c_{i,y}]`` and NLL; on the
training set: memorisation of the noisy labels.

Quick: 1 seed, 15 epochs, MLE vs EMO-combined. Full: 3 seeds, 40 epochs, plus EMO alone (reported; the post
warns it cannot separate synonyms). Gate (seed means): EMO-combined's expected transport cost is lower than
MLE's by >= 10% relative, and its group accuracy is not lower than MLE's minus 1 point.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from kexue.losses import emo_distance, emo_loss  # noqa: E402
from kexue.repro._finetune import flip_labels, mlp, plot_epoch_curves, predict_proba, train_classifier  # noqa: E402
from kexue.repro.base import Claim, Result, Table, check_mode, save_figure, track  # noqa: E402

CLAIM = Claim(
    slug="emo-loss",
    title="EMO: a classification loss built on optimal transport",
    title_zh="EMO:基于最优传输思想设计的分类损失函数",
    url="https://kexue.fm/archives/9797",
    date="2023-10-13",
    claim=(
        "Measuring the error as the optimal-transport cost between the predicted distribution and the target, "
        "with a cost from fixed embeddings, penalises semantically close mistakes less, so the model puts less "
        "probability on unrelated classes (lower expected transport cost) without losing accuracy."
    ),
)

N_GROUPS, PER_GROUP, DIM = 12, 4, 20
N_CLASSES = N_GROUPS * PER_GROUP
SIZES = (DIM, 256, 256, N_CLASSES)


def synonym_task(
    seed: int, n_train: int = 6000, n_test: int = 3000, noise: float = 0.3
) -> dict[str, torch.Tensor]:
    """The synthetic synonym task: data, clean and noisy labels, class groups and cost embeddings."""
    g = torch.Generator().manual_seed(seed)
    groups = torch.arange(N_CLASSES) // PER_GROUP
    group_c = 3.0 * torch.randn(N_GROUPS, DIM, generator=g)
    class_c = group_c[groups] + 0.7 * torch.randn(N_CLASSES, DIM, generator=g)

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(N_CLASSES, (n,), generator=g)
        return class_c[y] + torch.randn(n, DIM, generator=g), y

    xtr, ytr = sample(n_train)
    xte, yte = sample(n_test)
    emb = F.one_hot(groups, N_GROUPS).float() + 0.3 * torch.randn(N_CLASSES, N_GROUPS, generator=g)
    noisy, flipped = flip_labels(ytr, N_CLASSES, noise, seed=seed + 1, groups=groups)
    return {
        "xtr": xtr,
        "ytr": ytr,
        "noisy": noisy,
        "flipped": flipped,
        "xte": xte,
        "yte": yte,
        "groups": groups,
        "emb": emb,
    }


def train_one(task: dict[str, torch.Tensor], seed: int, epochs: int, variant: str) -> dict[str, list[float]]:
    model = mlp(SIZES, seed)
    emb, groups = task["emb"], task["groups"]
    hist: dict[str, list[float]] = {k: [] for k in ("acc", "group_acc", "cost", "nll", "memo")}

    def on_epoch(_: int) -> None:
        with torch.no_grad():
            model.eval()
            logits = model(task["xte"])
            model.train()
            yte = task["yte"]
            pred = logits.argmax(-1)
            hist["acc"].append(float((pred == yte).float().mean()))
            hist["group_acc"].append(float((groups[pred] == groups[yte]).float().mean()))
            hist["cost"].append(float(emo_distance(logits, yte, emb)))
            hist["nll"].append(float(F.cross_entropy(logits, yte)))
            ptr = predict_proba(model, task["xtr"]).argmax(-1)
            f = task["flipped"]
            hist["memo"].append(float((ptr[f] == task["noisy"][f]).float().mean()))

    def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if variant == "MLE":
            return F.cross_entropy(logits, y)
        return emo_loss(logits, y, emb, combine="official" if variant == "EMO combined" else "none")

    train_classifier(
        model,
        task["xtr"],
        task["noisy"],
        loss_fn,
        epochs=epochs,
        batch_size=128,
        lr=1e-3,
        seed=seed,
        on_epoch=on_epoch,
    )
    return hist


def run(mode: str, seed: int, out: Path) -> Result:
    mode = check_mode(mode)
    out = Path(out)
    torch.manual_seed(seed)
    result = Result()
    epochs = 15 if mode == "quick" else 40
    seeds = [seed] if mode == "quick" else [seed + i for i in range(3)]
    variants = ["MLE", "EMO combined"] + ([] if mode == "quick" else ["EMO alone"])
    hists: dict[str, list[dict[str, list[float]]]] = {v: [] for v in variants}
    for s in track(seeds, "synonym task"):
        task = synonym_task(1000 + s)
        for v in variants:
            hists[v].append(train_one(task, s, epochs, v))

    def final(v: str, key: str) -> float:
        vals = [h[key][-1] for h in hists[v]]
        return sum(vals) / len(vals)

    keys = ("acc", "group_acc", "cost", "nll", "memo")
    for v in variants:
        for k in keys:
            result.metrics[f"{v} {k}"] = final(v, k)
    result.table = Table(
        ["loss", "test acc", "group acc", "expected transport cost", "test NLL", "memorised noisy labels"],
        [[v] + [round(final(v, k), 4) for k in keys] for v in variants],
        caption=f"48 classes in 12 synonym groups, 30% cross-group label noise, {epochs} epochs, seeds {seeds}",
    )
    mle_cost, emo_cost = final("MLE", "cost"), final("EMO combined", "cost")
    result.metrics["relative cost reduction"] = 1 - emo_cost / mle_cost
    result.check(
        "EMO (combined) lowers the expected transport cost by >= 10% relative to MLE",
        emo_cost <= 0.9 * mle_cost,
        emo=emo_cost,
        mle=mle_cost,
        reduction=1 - emo_cost / mle_cost,
    )
    result.check(
        "EMO (combined) keeps group accuracy within 1 point of MLE's (or better)",
        final("EMO combined", "group_acc") >= final("MLE", "group_acc") - 0.01,
        emo=final("EMO combined", "group_acc"),
        mle=final("MLE", "group_acc"),
    )

    fig = plot_epoch_curves(
        hists,
        variants,
        [("cost", "expected transport cost (test)"), ("group_acc", "group accuracy (test)"),
         ("acc", "top-1 accuracy (test)")],
        epochs,
        f"synonym task, 30% cross-group label noise (seed {seeds[0]})",
    )  # fmt: skip
    save_figure(fig, out, "emo_synonyms.png", result)
    return result
