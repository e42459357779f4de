"""Reproduction of "梯度流:探索通向最小值之路" (kexue.fm/archives/9660): gradient descent is the Euler
method of the gradient flow, and the reverse-KL Wasserstein gradient flow is the Fokker-Planck equation, i.e.
Langevin dynamics.

Quick mode: (A) GD / RK4 convergence orders on a quadratic, monotone decrease below ``2/L``, the proximal and
natural-gradient forms; (B) Langevin particle moments vs the Ornstein-Uhlenbeck closed form and a monotone
KL(q_t || p); (C) a 1-D finite-volume Fokker-Planck solution vs a Langevin histogram on a bimodal target.
Full mode adds (D): 2-D Langevin and KDE probability-flow particles on 8 wide Gaussians.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from kexue.flows.gradient import gradient_descent, gradient_flow, natural_gradient_step, proximal_step
from kexue.flows.particles import fokker_planck_1d, langevin, probability_flow_particles
from kexue.metrics import sliced_wasserstein
from kexue.repro.base import Claim, Result, Table, check_mode, save_figure, track

CLAIM = Claim(
    slug="gradient-flow",
    title="Gradient flow: the path to a minimum, and Wasserstein gradient flows",
    title_zh="梯度流:探索通向最小值之路",
    url="https://kexue.fm/archives/9660",
    date="2023-06-16",
    claim=(
        "Gradient descent is the Euler discretisation of the gradient flow dx/dt = -grad f (first-order "
        "accurate, monotone for small steps), and the Wasserstein gradient flow of KL(q || p) is the "
        "Fokker-Planck equation realised by Langevin dynamics, which converges to p using only grad log p."
    ),
)

D64 = torch.float64
A = torch.diag(torch.tensor([1.0, 10.0], dtype=D64))


def _quad(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (x @ A * x).sum(-1)


def _quad_grad(x: torch.Tensor) -> torch.Tensor:
    return x @ A


def _slope(hs: list[float], errs: list[float]) -> float:
    lx = torch.tensor([math.log(h) for h in hs], dtype=D64)
    ly = torch.tensor([math.log(e) for e in errs], dtype=D64)
    lx, ly = lx - lx.mean(), ly - ly.mean()
    return float((lx * ly).sum() / (lx * lx).sum())


def _part_a(result: Result, out: Path) -> None:
    x0 = torch.tensor([1.0, 1.0], dtype=D64)
    exact = torch.matrix_exp(-A) @ x0
    alphas = [0.1 / 2**k for k in range(7)]  # 0.1 ... 1/640
    e_gd = [float((gradient_flow(x0, 1.0, round(1 / a), grad=_quad_grad) - exact).norm()) for a in alphas]
    rk_h = [0.1, 0.05, 0.025, 0.0125, 0.00625]
    e_rk = [
        float((gradient_flow(x0, 1.0, round(1 / h), grad=_quad_grad, method="rk4") - exact).norm())
        for h in rk_h
    ]
    usable = [(h, e) for h, e in zip(rk_h[1:], e_rk[1:]) if e > 1e-13]  # asymptotic range, above round-off
    s_gd = _slope(alphas, e_gd)
    s_rk = _slope([h for h, _ in usable], [e for _, e in usable])
    result.metrics.update({"gd_order": s_gd, "rk4_order": s_rk})
    result.check("GD error is O(alpha) (log-log slope in [0.9, 1.1])", 0.9 <= s_gd <= 1.1, slope=s_gd)
    result.check("RK4 error is O(h^4) (slope in [3.7, 4.3])", 3.7 <= s_rk <= 4.3, slope=s_rk)
    gd_same = torch.equal(
        gradient_descent(x0, 0.01, 100, f=_quad, return_path=True),
        gradient_flow(x0, 1.0, 100, grad=_quad_grad, return_path=True),
    )
    result.check("one GD step == one Euler step of the flow (bitwise)", gd_same)
    f_small = _quad(gradient_descent(x0, 0.19, 200, grad=_quad_grad, return_path=True))
    f_big = _quad(gradient_descent(x0, 0.21, 200, grad=_quad_grad, return_path=True))
    fine = gradient_flow(x0, 3.0, 300, grad=_quad_grad, method="rk4", return_path=True)
    result.check(
        "f decreases monotonically along the flow and along GD with alpha = 0.19 < 2/L",
        bool((f_small[1:] <= f_small[:-1]).all()) and bool((_quad(fine)[1:] <= _quad(fine)[:-1]).all()),
    )
    result.check(
        "GD with alpha = 0.21 > 2/L diverges",
        float(f_big[-1]) > 1e3 * float(f_big[0]),
        f_final=float(f_big[-1]),
    )
    # proximal (linearised) step solved numerically == GD step; natural gradient with exact Fisher
    xs = torch.tensor([[0.7, -0.4], [2.0, 1.0]], dtype=D64)
    prox_err = float((proximal_step(xs, 0.05, f=_quad) - (xs - 0.05 * xs @ A)).abs().max())
    result.check_le("proximal step (L-BFGS on the penalised problem) == GD step", prox_err, 1e-10)
    theta = torch.tensor([0.8, math.log(1.5)], dtype=D64)

    def kl_to_std_normal(th: torch.Tensor) -> torch.Tensor:
        m, s = th[0], th[1].exp()
        return 0.5 * (s * s + m * m - 1) - th[1]

    def kl_between(th: torch.Tensor, th0: torch.Tensor) -> torch.Tensor:
        m, ls, m0, ls0 = th[0], th[1], th0[0], th0[1]
        return ls - ls0 + (torch.exp(2 * ls0) + (m0 - m) ** 2) / (2 * torch.exp(2 * ls)) - 0.5

    fisher = torch.autograd.functional.hessian(lambda th: kl_between(th, theta.detach()), theta.clone())
    grad = torch.autograd.functional.jacobian(kl_to_std_normal, theta)
    ng = natural_gradient_step(theta, grad, fisher, 0.1)
    m, s = 0.8, 1.5
    closed = torch.tensor([m - 0.1 * s * s * m, math.log(s) - 0.1 * (s * s - 1) / 2], dtype=D64)
    ng_err = float((ng - closed).abs().max())
    result.check_le(
        "natural gradient with the exact Fisher == closed form (Gaussian, mean/log-std)", ng_err, 1e-10
    )

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    path_gd = gradient_descent(x0, 0.15, 15, grad=_quad_grad, return_path=True)
    ts = torch.linspace(0, 2.25, 200, dtype=D64)
    flow = torch.stack([torch.matrix_exp(-A * t) @ x0 for t in ts])
    axes[0].plot(flow[:, 0], flow[:, 1], "k-", label="gradient flow (exact)")
    axes[0].plot(path_gd[:, 0], path_gd[:, 1], "o-", ms=3, label="GD, alpha = 0.15")
    axes[0].set_title("f = (x1^2 + 10 x2^2)/2", fontsize=9)
    axes[0].legend(fontsize=7)
    axes[1].loglog(alphas, e_gd, "o-", label=f"GD / Euler (slope {s_gd:.2f})")
    axes[1].loglog(rk_h, e_rk, "s-", label=f"RK4 (slope {s_rk:.2f})")
    axes[1].set_xlabel("step size")
    axes[1].set_ylabel("error at T = 1")
    axes[1].legend(fontsize=7)
    save_figure(fig, out, "gd_vs_flow.png", result)


def _gauss_kl(mean: torch.Tensor, cov: torch.Tensor, m: torch.Tensor, s2: float) -> float:
    d = mean.shape[0]
    return 0.5 * float(
        torch.trace(cov) / s2 + (m - mean).pow(2).sum() / s2 - d + d * math.log(s2) - torch.logdet(cov)
    )


def _part_b(result: Result, n: int, seed: int) -> list[tuple[float, float]]:
    # particles in float32 (3x faster noise); moments are accumulated in float64
    m, s2, h = torch.tensor([1.0, -1.0]), 0.25, 1e-3
    g = torch.Generator().manual_seed(seed)
    x = 2.0 * torch.randn(n, 2, generator=g)
    kl: list[tuple[float, float]] = []
    rows_ok = True
    worst = 0.0
    t = 0.0
    checkpoints = {100: 0.1, 500: 0.5, 2000: 2.0}
    for k in track(range(1, 2001), "Langevin OU particles"):
        x = langevin(lambda z: -(z - m) / s2, x, h, 1, generator=g)
        t = k * h
        if k % 50 == 0:
            xd = x.to(D64)
            kl.append((t, _gauss_kl(xd.mean(0), torch.cov(xd.T), m.to(D64), s2)))
        if k in checkpoints:
            decay = math.exp(-t / s2)
            mean_t = m.to(D64) * (1 - decay)
            var_t = s2 + decay**2 * (4.0 - s2)
            xd = x.to(D64)
            emp_mean, emp_cov = xd.mean(0), torch.cov(xd.T)
            se_mean = math.sqrt(var_t / n)
            se_var = var_t * math.sqrt(2 / (n - 1))
            dm = float((emp_mean - mean_t).abs().max())
            dv = float((emp_cov.diagonal() - var_t).abs().max())
            dc = abs(float(emp_cov[0, 1]))
            ok = (
                dm <= 4 * se_mean + 2 * h
                and dv <= 4 * se_var + 2 * h
                and dc <= 4 * var_t / math.sqrt(n) + 2 * h
            )
            rows_ok &= ok
            worst = max(worst, dm / (4 * se_mean + 2 * h), dv / (4 * se_var + 2 * h))
    result.check(
        "Langevin moments follow the OU solution at t = 0.1, 0.5, 2 (4 standard errors + 2 step)",
        rows_ok,
        worst_ratio_to_tolerance=worst,
    )
    kls = [v for _, v in kl]
    result.check(
        "KL(q_t || p) (Gaussian, from moments) decreases until it reaches the sampling-noise level 1e-3",
        all(b < a for a, b in zip(kls, kls[1:]) if a > 1e-3),
        kl_start=kls[0],
        kl_end=kls[-1],
    )
    result.metrics["ou_kl_end"] = kls[-1]
    return kl


def _part_c(result: Result, out: Path, n: int, seed: int, kl: list[tuple[float, float]]) -> None:
    x = torch.linspace(-6, 6, 601, dtype=D64)
    x = (x[1:] + x[:-1]) / 2  # 600 cell centres
    dx = float(x[1] - x[0])

    def log_p(z: torch.Tensor) -> torch.Tensor:
        return torch.logaddexp(-((z - 2) ** 2) / 0.5, -((z + 2) ** 2) / 0.5)

    q0 = torch.exp(-x.pow(2) / (2 * 0.09))
    q0 = q0 / (q0.sum() * dx)
    h = 2e-3
    times = [0.5, 2.0, 8.0]
    steps = [round(t / h) for t in times]
    _, pde = fokker_planck_1d(log_p, q0, x, h, steps[-1], record_every=steps[0])
    mass_err = float((pde.sum(1) * dx - 1).abs().max())
    result.check_le("Fokker-Planck solver conserves mass", mass_err, 1e-10)
    g = torch.Generator().manual_seed(seed + 1)
    parts = 0.3 * torch.randn(n, 1, generator=g)

    def score(z: torch.Tensor) -> torch.Tensor:
        # grad log p of 0.5 N(-2, 0.5^2) + 0.5 N(2, 0.5^2) in closed form (particles in float32)
        return (2 * torch.tanh(8 * z) - z) / 0.25

    edges = torch.linspace(-6, 6, 41, dtype=D64)  # bins of width 0.3 = 15 PDE cells
    l1s = []
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    done = 0
    for ax, t, k in zip(axes, times, steps):
        parts = langevin(score, parts, h, k - done, generator=g)
        done = k
        q = pde[k // steps[0]]
        pde_bins = q.reshape(40, 15).sum(1) * dx
        hist = torch.histc(parts[:, 0].clamp(-5.999, 5.999), bins=40, min=-6, max=6).to(D64) / n
        l1 = float((hist - pde_bins).abs().sum())
        l1s.append(l1)
        ax.bar(
            ((edges[1:] + edges[:-1]) / 2).numpy(),
            (hist / 0.3).numpy(),
            width=0.3,
            alpha=0.4,
            label="Langevin histogram",
        )
        ax.plot(x.numpy(), q.numpy(), "k-", lw=1, label="Fokker-Planck PDE")
        ax.set_title(f"t = {t}: L1 = {l1:.3f}", fontsize=9)
    axes[0].legend(fontsize=7)
    save_figure(fig, out, "fokker_planck_vs_langevin.png", result)
    for t, l1 in zip(times, l1s):
        result.metrics[f"pde_vs_langevin_l1_t{t:g}"] = l1
    result.check_le(
        "Langevin histogram matches the Fokker-Planck PDE (max L1 over t = 0.5, 2, 8)", max(l1s), 0.05
    )
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.semilogy([t for t, _ in kl], [max(v, 1e-6) for _, v in kl])
    ax.set_xlabel("t")
    ax.set_ylabel("KL(q_t || p)")
    ax.set_title("Langevin towards N((1,-1), 0.25 I)", fontsize=9)
    save_figure(fig, out, "kl_vs_time.png", result)


def _part_d(result: Result, out: Path, seed: int) -> None:
    """Full mode: 2-D Langevin and KDE probability-flow particles on 8 Gaussians of std 0.3."""
    import time

    centres = 2.0 * torch.stack(
        [torch.cos(torch.arange(8) * math.pi / 4), torch.sin(torch.arange(8) * math.pi / 4)], 1
    ).to(D64)
    std = 0.3

    def score(z: torch.Tensor) -> torch.Tensor:  # grad log p of the mixture in closed form
        c = centres.to(z.dtype)
        w = torch.softmax(-torch.cdist(z, c).pow(2) / (2 * std * std), dim=1)
        return (w @ c - z) / (std * std)

    g = torch.Generator().manual_seed(seed + 7)

    def target(n: int) -> torch.Tensor:
        return centres[torch.randint(0, 8, (n,), generator=g)] + std * torch.randn(
            n, 2, generator=g, dtype=D64
        )

    n = 20_000
    ref, ref2 = target(n), target(n)
    floor = sliced_wasserstein(ref, ref2)
    x = torch.randn(n, 2, generator=g)  # float32 particles: cheaper noise
    t0 = time.perf_counter()
    curve = []
    for r in track(range(20), "2-D Langevin"):
        x = langevin(score, x, 1e-3, 1000, generator=g)
        curve.append(((r + 1) * 1.0, sliced_wasserstein(x, ref)))
    lang_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    xp = torch.randn(1500, 2, generator=g, dtype=D64)
    xp = probability_flow_particles(score, xp, 1e-2, 1000, bandwidth=0.15)
    pf_s = time.perf_counter() - t0
    swd_pf = sliced_wasserstein(xp, ref[:1500])
    floor_small = sliced_wasserstein(ref[:1500], ref2[:1500])
    result.metrics.update(
        {
            "swd_langevin_2d": curve[-1][1],
            "swd_floor_2d": floor,
            "swd_probability_flow_2d": swd_pf,
            "langevin_seconds": lang_s,
            "probability_flow_seconds": pf_s,
        }
    )
    result.check_le("2-D Langevin reaches the target (SWD <= 2x noise floor)", curve[-1][1], 2 * floor)
    result.check_le(
        "probability-flow particles reach the target (SWD <= 3x floor at n = 1500)", swd_pf, 3 * floor_small
    )
    fig, axes = plt.subplots(1, 2, figsize=(8, 4))
    axes[0].scatter(x[:3000, 0], x[:3000, 1], s=1)
    axes[0].set_title(f"Langevin, SWD {curve[-1][1]:.3f} (floor {floor:.3f})", fontsize=9)
    axes[1].scatter(xp[:, 0], xp[:, 1], s=1)
    axes[1].set_title(f"KDE probability flow, SWD {swd_pf:.3f}", fontsize=9)
    for ax in axes:
        ax.set_aspect("equal")
    save_figure(fig, out, "particles_2d.png", result)


def run(mode: str, seed: int, out: Path) -> Result:
    mode = check_mode(mode)
    torch.manual_seed(seed)
    out = Path(out)
    result = Result()
    _part_a(result, out)
    kl = _part_b(result, 100_000 if mode == "full" else 20_000, seed)
    _part_c(result, out, 50_000 if mode == "full" else 15_000, seed, kl)
    if mode == "full":
        _part_d(result, out, seed)
    result.table = Table(
        columns=["quantity", "measured", "expected"],
        rows=[
            ["GD log-log slope", f"{result.metrics['gd_order']:.3f}", "1"],
            ["RK4 log-log slope", f"{result.metrics['rk4_order']:.3f}", "4"],
            ["final Gaussian KL(q || p) (OU run)", f"{result.metrics['ou_kl_end']:.2e}", "-> 0"],
            ["PDE vs Langevin L1 at t = 8", f"{result.metrics['pde_vs_langevin_l1_t8']:.3f}", "< 0.05"],
        ],
        caption="Gradient descent as Euler's method; Langevin as the reverse-KL Wasserstein flow.",
    )
    return result
