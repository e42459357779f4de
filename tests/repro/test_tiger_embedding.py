from kexue.repro import tiger_embedding
from kexue.repro.catalog import BY_SLUG


def test_quick_mode_reproduces(tmp_path):
    post = BY_SLUG[tiger_embedding.CLAIM.slug]
    assert (tiger_embedding.CLAIM.url, tiger_embedding.CLAIM.date) == (post.url, post.date)
    result = tiger_embedding.run("quick", 0, tmp_path)
    assert result.verdict == "reproduced", [c for c in result.checks if not c.passed]
    m = result.metrics
    assert m["tiger_rare_saturated"] >= 0.2 and m["lion_rare_saturated"] >= 0.2
    assert m["lazy_rare_saturated"] == 0.0 and m["adamw_rare_saturated"] == 0.0
    assert m["closed_form_corr"] >= 0.99 and abs(m["closed_form_ratio"] - 1) <= 0.02
    assert all(p.is_file() for p in result.figures)
