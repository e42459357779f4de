"""The EMO loss claim in quick mode."""

from kexue.repro import load
from kexue.repro.emo_loss import N_CLASSES, synonym_task


def test_emo_loss_reproduces_quick(tmp_path):
    result = load("emo-loss").run("quick", 0, tmp_path)
    assert result.verdict == "reproduced", [c for c in result.checks if not c.passed]
    m = result.metrics
    assert m["relative cost reduction"] >= 0.10
    assert m["EMO combined group_acc"] >= m["MLE group_acc"] - 0.01
    assert result.figures and all(p.is_file() for p in result.figures)


def test_synonym_task_is_seeded_and_noise_crosses_groups():
    a, b = synonym_task(3), synonym_task(3)
    assert all(a[k].equal(b[k]) for k in a)
    f = a["flipped"]
    assert abs(f.float().mean().item() - 0.3) < 1e-3
    groups = a["groups"]
    assert (groups[a["noisy"][f]] != groups[a["ytr"][f]]).all()
    assert (a["noisy"][~f] == a["ytr"][~f]).all()
    assert a["emb"].shape == (N_CLASSES, 12)
