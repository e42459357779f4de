"""Reproduction of "通向最优分布之路:概率空间的最小化" (kexue.fm/archives/10289).

(A) On the simplex: the convex-set search (Frank-Wolfe) update, projected gradient descent and the
KKT / Lagrange-multiplier solution reach the same optimum on the post's sparsemax example, a convex quadratic
and an entropy-regularised linear objective (closed form ``softmax(c / tau)``), iterates never leave the
simplex, and the optimality condition ``p . grad F = min grad F`` (zero Frank-Wolfe gap) holds at the optimum.
(B) For densities: the change-of-variables iteration ``p <- p + eta div(p grad dF/dp)`` decreases ``F``; its
finite-volume solution and the particles moving with ``-grad dF/dp`` both follow the Ornstein-Uhlenbeck closed
form for ``F = int p log p + p x^2/2``. Full mode adds n = 1000 quadratics and the porous-medium functional.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from kexue.flows.density import density_flow_1d, density_flow_particles, functional_value_1d
from kexue.flows.simplex import minimize_on_simplex, project_to_simplex
from kexue.repro.base import Claim, Result, Table, check_mode, save_figure, track

CLAIM = Claim(
    slug="probability-space-optimization",
    title="The road to an optimal distribution: minimisation over probability space",
    title_zh="通向最优分布之路:概率空间的最小化",
    url="https://kexue.fm/archives/10289",
    date="2024-08-06",
    claim=(
        "On the simplex the convex-set search p <- (1 - eta) p + eta onehot(argmin grad F) stays feasible "
        "and reaches the optimum characterised by p . grad F = min grad F (agreeing with the Lagrange/KKT "
        "solution, "
        "e.g. sparsemax); for densities, moving mass along -grad dF/dp (the Wasserstein gradient flow) "
        "decreases F, and its PDE and particle views agree."
    ),
)

D64 = torch.float64
TAU = 0.5


def _problems(n: int, seeds: list[int]) -> dict[str, dict]:
    """The three objective families, batched over seeds, with reference optima."""
    gen = [torch.Generator().manual_seed(1000 * s + n) for s in seeds]
    x = torch.stack([torch.randn(n, generator=g, dtype=D64) for g in gen])
    ms = torch.stack([torch.randn(n, n, generator=g, dtype=D64) for g in gen])
    q = ms @ ms.transpose(1, 2) / n + 0.1 * torch.eye(n, dtype=D64)
    c_quad = torch.stack([torch.randn(n, generator=g, dtype=D64) for g in gen])
    c_ent = torch.stack([torch.randn(n, generator=g, dtype=D64) for g in gen])
    return {
        "sparsemax": {
            "F": lambda p: (p - x).pow(2).sum(-1),
            "grad": lambda p: 2 * (p - x),
            "ref": project_to_simplex(x),
            "inv": lambda nu: torch.clamp(x + nu / 2, min=0),
            "lip": 2.0,
        },
        "quadratic": {
            "F": lambda p: (
                0.5 * (p.unsqueeze(-2) @ q @ p.unsqueeze(-1)).squeeze(-1).squeeze(-1) + (c_quad * p).sum(-1)
            ),
            "grad": lambda p: (q @ p.unsqueeze(-1)).squeeze(-1) + c_quad,
            "q": q,
            "c": c_quad,
            "lip": float(torch.linalg.eigvalsh(q).max()),
        },
        "entropy": {
            "F": lambda p: -(c_ent * p).sum(-1) + TAU * torch.xlogy(p, p).sum(-1),
            "grad": lambda p: -c_ent + TAU * (torch.log(p) + 1),
            "ref": torch.softmax(c_ent / TAU, -1),
            "inv": lambda nu: torch.exp((nu + c_ent) / TAU - 1),
        },
    }


def _quadratic_reference(q: torch.Tensor, c: torch.Tensor, p_start: torch.Tensor) -> torch.Tensor:
    """Exact optimum of p^T Q p / 2 + c.p on the simplex: solve the KKT system on the support found by
    projected gradient descent, then verify it (returns NaNs if the support guess fails the KKT test)."""
    out = torch.empty_like(p_start)
    for b in range(q.shape[0]):
        support = (p_start[b] > 1e-9).nonzero().squeeze(-1)
        k = support.numel()
        kkt = torch.zeros(k + 1, k + 1, dtype=D64)
        kkt[:k, :k] = q[b][support][:, support]
        kkt[:k, k] = -1.0
        kkt[k, :k] = 1.0
        rhs = torch.cat([-c[b][support], torch.ones(1, dtype=D64)])
        sol = torch.linalg.solve(kkt, rhs)
        p = torch.zeros_like(p_start[b])
        p[support] = sol[:k]
        grad = q[b] @ p + c[b]
        ok = bool((sol[:k] > 0).all()) and float(grad.min()) >= float(sol[k]) - 1e-10
        out[b] = p if ok else float("nan")
    return out


def _part_a(
    result: Result, out: Path, sizes: list[int], quad_sizes: list[int], ent_sizes: list[int], seeds: list[int]
) -> list[list[object]]:
    rows: list[list[object]] = []
    worst = {"objective": 0.0, "gap": 0.0, "min_p": 0.0, "sum_dev": 0.0}
    for n in track(sizes, "simplex solvers"):
        probs = _problems(n, seeds)
        p0 = torch.full((len(seeds), n), 1.0 / n, dtype=D64)
        for name, prob in probs.items():
            if (name == "quadratic" and n not in quad_sizes) or (name == "entropy" and n not in ent_sizes):
                continue
            F, G = prob["F"], prob["grad"]
            runs: dict[str, tuple[torch.Tensor, dict]] = {}
            runs["Frank-Wolfe (away steps, line search)"] = minimize_on_simplex(
                F, G, p0=p0, steps=5000, step_size="line_search", away_steps=True, tol=1e-12
            )
            if name != "entropy":  # projection can zero coordinates, where the entropy gradient is infinite
                eta = 0.5 if name == "sparsemax" else 1.0 / prob["lip"]
                runs["projected GD"] = minimize_on_simplex(
                    F,
                    G,
                    p0=p0,
                    method="projected",
                    steps=200 if name == "sparsemax" else 20000,
                    step_size=eta,
                    tol=1e-12,
                )
            if "inv" in prob:
                runs["KKT bisection"] = minimize_on_simplex(
                    F, G, p0=p0, method="kkt_bisection", steps=100, grad_inverse=prob["inv"]
                )
            if name == "quadratic":
                prob["ref"] = _quadratic_reference(prob["q"], prob["c"], runs["projected GD"][0])
            f_ref = F(prob["ref"])
            for method, (p, hist) in runs.items():
                err = float((F(p) - f_ref).abs().max())
                gap = float(hist["gap"][-1].max())
                worst["objective"] = max(worst["objective"], err)
                worst["gap"] = max(worst["gap"], gap)
                worst["min_p"] = min(worst["min_p"], float(p.min()))
                worst["sum_dev"] = max(worst["sum_dev"], float((p.sum(-1) - 1).abs().max()))
                rows.append([name, n, method, hist["gap"].shape[0] - 1, f"{err:.1e}", f"{gap:.1e}"])
    result.metrics.update({f"simplex_worst_{k}": v for k, v in worst.items()})
    ok_ref = not math.isnan(worst["objective"])
    result.check_le(
        "every solver reaches the reference optimum (objective error)",
        worst["objective"] if ok_ref else float("inf"),
        1e-6,
    )
    result.check_le("Frank-Wolfe gap p.grad F - min grad F at the solutions", worst["gap"], 1e-5)
    result.check(
        "solutions lie on the simplex (min p >= 0, |sum p - 1| < 1e-12)",
        worst["min_p"] >= 0 and worst["sum_dev"] < 1e-12,
        min_p=worst["min_p"],
        sum_dev=worst["sum_dev"],
    )
    # sparsemax closed form relu(x - lambda) == projection == KKT; post's example
    g = torch.Generator().manual_seed(seeds[0])
    x = torch.randn(8, 50, generator=g, dtype=D64)
    p, lam = project_to_simplex(x, return_threshold=True)
    pk, _ = minimize_on_simplex(
        lambda z: (z - x).pow(2).sum(-1),
        n=50,
        p0=torch.full((8, 50), 0.02, dtype=D64),
        method="kkt_bisection",
        steps=100,
        grad_inverse=lambda nu: torch.clamp(x + nu / 2, 0),
    )
    relu_err = float((p - torch.relu(x - lam[:, None])).abs().max())
    kkt_err = float((p - pk).abs().max())
    result.check_le(
        "sparsemax: projection == relu(x - lambda) == KKT bisection", max(relu_err, kkt_err), 1e-10
    )
    _figure_a(result, out, seeds[0])
    return rows


def _figure_a(result: Result, out: Path, seed: int) -> None:
    n = 100
    prob = _problems(n, [seed])["sparsemax"]
    F, G, f_ref = prob["F"], prob["grad"], prob["F"](prob["ref"])
    p0 = torch.full((1, n), 1.0 / n, dtype=D64)
    curves = {
        "FW, eta = 2/(k+2)": minimize_on_simplex(F, G, p0=p0, steps=1000)[1],
        "FW, line search": minimize_on_simplex(F, G, p0=p0, steps=1000, step_size="line_search", tol=1e-13)[
            1
        ],
        "FW + away steps": minimize_on_simplex(
            F, G, p0=p0, steps=1000, step_size="line_search", away_steps=True, tol=1e-13
        )[1],
        "projected GD (eta 0.25)": minimize_on_simplex(
            F, G, p0=p0, method="projected", steps=200, step_size=0.25, tol=1e-13
        )[1],
    }
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for label, hist in curves.items():
        ax.semilogy((hist["objective"][:, 0] - f_ref[0]).clamp_min(1e-16).numpy(), label=label)
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlabel("iteration")
    ax.set_ylabel("F(p) - F*")
    ax.set_title("sparsemax objective ||p - x||^2, n = 100", fontsize=9)
    ax.legend(fontsize=7)
    save_figure(fig, out, "simplex_convergence.png", result)


def _ou(t: float) -> tuple[float, float]:
    return 2 * math.exp(-t), 1 + math.exp(-2 * t) * (0.25 - 1)


def _part_b(result: Result, out: Path, n_particles: int, full: bool) -> None:
    times = [0.25, 1.0, 3.0]
    cells = 400
    edges = torch.linspace(-8, 8, cells + 1, dtype=D64)
    grid = (edges[1:] + edges[:-1]) / 2
    dx = float(grid[1] - grid[0])

    def phi(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # dF/dp for F = p log p + p x^2/2
        return torch.log(p.clamp_min(1e-300)) + 1 + x * x / 2

    def functional(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.xlogy(p, p) + p * x * x / 2

    p0 = torch.exp(-(grid - 2).pow(2) / (2 * 0.25))
    p0 = p0 / (p0.sum() * dx)
    dt = 5e-4
    every = round(0.25 / dt)
    _, snaps = density_flow_1d(phi, p0, grid, dt, round(times[-1] / dt), record_every=every)
    f_vals = functional_value_1d(functional, snaps, grid)
    mass_err = float((snaps.sum(1) * dx - 1).abs().max())
    # particles: quantiles of N(2, 0.5^2) (no sampling noise), Gaussian KDE with bandwidth h
    h, dtp = 0.11, 0.01
    u = (torch.arange(n_particles, dtype=D64) + 0.5) / n_particles
    x0 = (2 + 0.5 * math.sqrt(2) * torch.erfinv(2 * u - 1))[:, None]
    _, psnaps = density_flow_particles(
        phi, x0, dtp, round(times[-1] / dtp), bandwidth=h, record_every=round(0.25 / dtp)
    )
    rows_ok, worst = True, 0.0
    for t in times:
        k = round(t / 0.25)
        mean_t, var_t = _ou(t)
        q = snaps[k]
        pde_mean = float((q * grid).sum() * dx)
        pde_var = float((q * grid * grid).sum() * dx) - pde_mean**2
        xs = psnaps[k][:, 0]
        part_mean = float(xs.mean())
        part_var = float(xs.var(unbiased=False)) + h * h  # variance of the KDE density the particles carry
        errs = [
            abs(pde_mean / mean_t - 1),
            abs(pde_var / var_t - 1),
            abs(part_mean / mean_t - 1),
            abs(part_var / var_t - 1),
        ]
        worst = max(worst, *errs)
        rows_ok &= max(errs) <= 0.02
        result.metrics.update(
            {
                f"pde_mean_t{t:g}": pde_mean,
                f"pde_var_t{t:g}": pde_var,
                f"particle_mean_t{t:g}": part_mean,
                f"particle_var_t{t:g}": part_var,
            }
        )
    result.metrics["ou_worst_relative_error"] = worst
    result.check(
        "PDE and particles follow the OU closed form (mean, variance within 2% at t = 0.25, 1, 3)",
        rows_ok,
        worst_relative_error=worst,
        kde_bandwidth=h,
    )
    result.check(
        "F[p] decreases monotonically along the density iteration",
        bool((f_vals[1:] < f_vals[:-1]).all()),
        f_start=float(f_vals[0]),
        f_end=float(f_vals[-1]),
    )
    result.check_le("density iteration conserves mass", mass_err, 1e-10)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for t, color in zip(times, ("tab:blue", "tab:orange", "tab:green")):
        k = round(t / 0.25)
        axes[0].plot(grid.numpy(), snaps[k].numpy(), color=color, label=f"PDE t = {t:g}")
        axes[0].hist(psnaps[k][:, 0].numpy(), bins=60, density=True, alpha=0.3, color=color)
    axes[0].set_xlim(-4, 4)
    axes[0].legend(fontsize=7)
    axes[0].set_title("F = int p log p + p x^2/2: PDE (lines) vs particles (histograms)", fontsize=8)
    axes[1].plot([0.25 * i for i in range(len(f_vals))], f_vals.numpy(), "o-")
    axes[1].set_xlabel("t")
    axes[1].set_ylabel("F[p_t]")
    save_figure(fig, out, "density_flow.png", result)
    if full:
        _porous(result, grid, dx)


def _porous(result: Result, grid: torch.Tensor, dx: float) -> None:
    """F = int p^2 / 2: porous-medium flow; PDE vs particles at t = 1."""
    bump = torch.clamp(1 - (grid / 0.5).pow(2), min=0)
    bump = bump / (bump.sum() * dx)
    steps = round(1.0 / 2e-4)
    _, snaps = density_flow_1d(lambda p, x: p, bump, grid, 2e-4, steps, record_every=steps // 4)
    f_vals = functional_value_1d(lambda p, x: p * p / 2, snaps, grid)
    n = 2000
    cdf = torch.cumsum(bump, 0) * dx
    u = (torch.arange(n, dtype=D64) + 0.5) / n
    idx = torch.searchsorted(cdf, u).clamp(max=grid.shape[0] - 1)
    x0 = grid[idx][:, None] + dx * (
        torch.rand(n, 1, generator=torch.Generator().manual_seed(0), dtype=D64) - 0.5
    )
    xp = density_flow_particles(lambda p, x: p, x0, 2e-3, 500, bandwidth=0.05)
    hist = torch.histc(xp[:, 0], bins=grid.shape[0], min=-8, max=8).to(D64) / (n * dx)
    # compare on a coarser partition to average out particle noise
    coarse = 10
    l1 = float((hist.reshape(-1, coarse).sum(1) - snaps[-1].reshape(-1, coarse).sum(1)).abs().sum() * dx)
    support0, support1 = int((bump > 0).sum()), int((snaps[-1] > 1e-8).sum())
    result.metrics.update({"porous_l1_t1": l1})
    result.check(
        "porous medium: mass conserved, support spreads, F decreases",
        abs(float(snaps[-1].sum() * dx) - 1) < 1e-10
        and support1 > support0
        and bool((f_vals[1:] < f_vals[:-1]).all()),
        support_cells_t0=support0,
        support_cells_t1=support1,
    )
    result.check_le("porous medium: particles vs PDE at t = 1 (L1)", l1, 0.1)


def run(mode: str, seed: int, out: Path) -> Result:
    mode = check_mode(mode)
    torch.manual_seed(seed)
    out = Path(out)
    result = Result()
    full = mode == "full"
    seeds = list(range(seed, seed + 10)) if full else list(range(seed, seed + 3))
    rows = _part_a(
        result,
        out,
        sizes=[10, 100, 1000],
        quad_sizes=[10, 100, 1000] if full else [10, 100],
        ent_sizes=[10, 100, 1000] if full else [10],
        seeds=seeds,
    )
    _part_b(result, out, 1500 if full else 800, full)
    result.table = Table(
        columns=["objective", "n", "method", "iterations", "max |F - F*|", "max FW gap"],
        rows=rows,
        caption=f"Simplex solvers over {len(seeds)} random instances per row (float64).",
    )
    return result
