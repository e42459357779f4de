"""Small simulators behind the "science" posts.

* :mod:`kexue.sim.quanta` — the quantization model of neural scaling (Zipf-distributed quanta), analytic
  and Monte Carlo loss curves in parameters, data and steps.
* :mod:`kexue.sim.sparse_parity` — the multitask sparse-parity task and a small MLP trainer (the neural
  check of the quanta model).
* :mod:`kexue.sim.self_consuming` — self-consuming ("autophagous") generative loops: Gaussian and GMM
  models refitted on their own samples, with closed-form moments, W2 and k-NN precision/recall.
* :mod:`kexue.sim.simsiam` — SimSiam pieces: the two-scalar gradient-flow toy, the loss with and without
  stop-gradient, the collapse metric, the small digits networks and their training loop.

Submodules are imported explicitly (``from kexue.sim import quanta``); importing this package loads nothing.
"""
