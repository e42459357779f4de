"""Flows: rectified flow (ReFlow), gradient flows in parameter and probability space, simplex solvers.

* :mod:`kexue.flows.rectified` — rectified flow objective, ODE sampler, reflow pairs, straightness
  (kexue.fm/archives/9497, /9668).
* :mod:`kexue.flows.gradient` — gradient descent as the Euler method of ``dx/dt = -grad f``, proximal and
  natural-gradient steps (kexue.fm/archives/9660).
* :mod:`kexue.flows.particles` — Langevin, KDE probability-flow particles, 1-D Fokker-Planck, MonoFlow
  particles (kexue.fm/archives/9660, /9662).
* :mod:`kexue.flows.simplex` and :mod:`kexue.flows.density` — minimisation over the simplex (Frank-Wolfe,
  projection, KKT) and density flows ``dp/dt = div(p grad dF/dp)`` (kexue.fm/archives/10289).
"""

from kexue.flows.density import density_flow_1d, density_flow_particles, functional_value_1d
from kexue.flows.gradient import (
    descent_step,
    gradient_descent,
    gradient_flow,
    natural_gradient_step,
    proximal_step,
)
from kexue.flows.ode import ode_step, odeint_fixed
from kexue.flows.particles import (
    fokker_planck_1d,
    kde_log_density,
    kde_score,
    langevin,
    monoflow_particles,
    probability_flow_particles,
)
from kexue.flows.rectified import RectifiedFlow, VelocityMLP, gaussian_oracle_velocity, straightness
from kexue.flows.simplex import fw_gap, minimize_on_simplex, project_to_simplex, sparsemax

__all__ = [
    "RectifiedFlow",
    "VelocityMLP",
    "density_flow_1d",
    "density_flow_particles",
    "descent_step",
    "fokker_planck_1d",
    "functional_value_1d",
    "fw_gap",
    "gaussian_oracle_velocity",
    "gradient_descent",
    "gradient_flow",
    "kde_log_density",
    "kde_score",
    "langevin",
    "minimize_on_simplex",
    "monoflow_particles",
    "natural_gradient_step",
    "ode_step",
    "odeint_fixed",
    "probability_flow_particles",
    "project_to_simplex",
    "proximal_step",
    "sparsemax",
    "straightness",
]
