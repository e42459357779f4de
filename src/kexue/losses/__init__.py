"""Training losses.

* :func:`tvd_loss` / :class:`TVDLoss` (alias ``tailr_loss`` / ``TaiLrLoss``) — the TaiLr / TVD-style
  cross-entropy that down-weights low-probability targets ("缓解交叉熵过度自信的一个简明方案",
  2023-03-14, kexue.fm/archives/9526).
* :func:`emo_loss` / :class:`EMOLoss` / :func:`emo_distance` — the earth-mover (optimal transport) loss with
  a cost from fixed embeddings ("EMO:基于最优传输思想设计的分类损失函数", 2023-10-13, kexue.fm/archives/9797).

Both are drop-ins for ``F.cross_entropy`` on ``(logits [..., V], target [...])`` with ``ignore_index`` and
``reduction``. GAN losses live in :mod:`kexue.losses.gan`.
"""

from .emo import EMOLoss, emo_distance, emo_loss
from .tvd import TaiLrLoss, TVDLoss, gamma_schedule, tailr_loss, tvd_loss

__all__ = [
    "EMOLoss",
    "TVDLoss",
    "TaiLrLoss",
    "emo_distance",
    "emo_loss",
    "gamma_schedule",
    "tailr_loss",
    "tvd_loss",
]
