"""Perceptual attacks of Laidlaw et al. (ICLR 2021), bounded in LPIPS distance d (losses/lpips.py):

- `fast_lpa`: Fast Lagrangian Perceptual Attack, PAT's training attack. Maximizes the margin loss
  minus lam_t * max(0, d - bound) with lam growing from lam/10 to lam and a step decaying from
  `step` to step/10 (in LPIPS units: the normalized gradient is scaled by step / its LPIPS length,
  measured by a finite difference of size h). No projection by default (PAT's code): the bound is
  soft; `projection="bisection"` makes it hard.
- `lpa`: Lagrangian Perceptual Attack (evaluation): the same penalty with a per-example lam that
  starts at 0.01 and is multiplied by 10 after every round ("binary step") in which the example
  ended at d >= bound; an example stops once it is misclassified inside the bound; then the result
  is projected onto the LPIPS ball.
- `ppgd`: Perceptual PGD (evaluation): each step solves (J^T J) v = grad by conjugate gradient
  (J = d phi / dx at the current point, J v by a finite difference of size h, J^T u by autograd),
  scales v to LPIPS length `step` (2 bound / steps), then projects onto the LPIPS ball.
- Projections onto {d(x, x') <= bound}: `newton` (PAT's evaluation default: gradient steps on d
  with 10% overshoot, at most 10, then bisection for what is still outside) and `bisection` (on the
  segment from x to x_adv, 10 halvings). Both return points inside the ball.

All of them, like the PGD engine (attacks/pgd.py): x and the result in [0, 1]; the model in the
mode asked for (eval by default), restored after; gradients w.r.t. the input only
(torch.autograd.grad), so parameter gradients are never touched; the result is detached.
They do not run on `pgd` itself: their step is not a fixed-size l_inf / l_2 step followed by a
projection onto a norm ball (which is all `pgd`'s `ascend` can express) but a step measured in
LPIPS units, with a penalty weight schedule (LPA, Fast-LPA) or an inner conjugate-gradient solve
(PPGD), and their projection is onto an LPIPS ball.

Defaults: PAT's code (perceptual_advex). Fast-LPA: 10 steps in training (bound 0.5 on CIFAR-10),
lam 10, h 0.1, kappa = inf (plain margin). LPA and PPGD in evaluation: 40 steps, kappa 1; LPA 5
rounds, h 0.1; PPGD 5 CG iterations, h 1e-3.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from ..losses.lpips import LPIPS
from ..models.dual_bn import model_mode

PROJECTIONS = ("none", "bisection", "newton")
START_STD = 0.01  # the random start x + N(0, 0.01^2) of all three attacks (PAT's code)


def margin_loss(logits: torch.Tensor, y: torch.Tensor, kappa: float = float("inf")) -> torch.Tensor:
    """Per-example margin loss [B]: min(kappa, max_{k != y} z_k - z_y) (Carlini-Wagner's f6), positive
    when the example is misclassified. logits [B, K] (K >= 2), y int64 [B]."""
    z = logits.float()
    correct = z.gather(1, y[:, None]).squeeze(1)
    other = z.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return (other - correct).clamp(max=kappa)


def _unit(t: torch.Tensor) -> torch.Tensor:
    return t / (t.flatten(1).norm(dim=1).view(-1, *[1] * (t.dim() - 1)) + 1e-8)


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *[1] * (like.dim() - 1))


def _start(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) * START_STD
    return (x + noise).clamp(0, 1)


def _phi_logits(model: nn.Module, lpips: LPIPS, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """phi(x) and model(x): one forward when LPIPS is self-bound, two otherwise."""
    if lpips.self_bound:
        return lpips.features_logits(x)
    return lpips.features(x), model(x)


@torch.no_grad()
def project_bisection(lpips: LPIPS, x: torch.Tensor, x_adv: torch.Tensor, phi0: torch.Tensor, bound: float,
                      steps: int = 10) -> torch.Tensor:
    """The point x + t (x_adv - x) with the largest t in [0, 1] found inside {d(x, .) <= bound} by `steps`
    halvings (t = 1 when x_adv is already inside). x, x_adv [B, ...] in [0, 1]; phi0 = phi(x)."""
    inside = (lpips.features(x_adv) - phi0).norm(dim=1) <= bound
    lo = torch.where(inside, 1.0, 0.0).to(x)
    hi = torch.ones_like(lo)
    for _ in range(steps):
        mid = (lo + hi) / 2
        d = (lpips.features(x + _bcast(mid, x) * (x_adv - x)) - phi0).norm(dim=1)
        ok = (d <= bound) & ~inside
        lo = torch.where(ok, mid, lo)
        hi = torch.where(ok | inside, hi, mid)
    return x + _bcast(lo, x) * (x_adv - x)


def project_newton(lpips: LPIPS, x: torch.Tensor, x_adv: torch.Tensor, phi0: torch.Tensor, bound: float,
                   steps: int = 10, overshoot: float = 0.1) -> torch.Tensor:
    """Move each x_adv outside the LPIPS ball back inside by Newton steps on d: x' -= (d - bound + overshoot)
    (1 + overshoot) grad d / ||grad d||^2 (clamped to [0, 1]), at most `steps` times; examples still
    outside are then bisected between x and the original x_adv. x, x_adv [B, ...] in [0, 1]; phi0 = phi(x)."""
    cur = x_adv.detach().clone()
    todo = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    for _ in range(steps):
        idx = todo.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        xi = cur[idx].requires_grad_(True)
        d = (lpips.features(xi) - phi0[idx]).norm(dim=1)
        over = (d - bound).clamp(min=0).detach()
        (grad,) = torch.autograd.grad(d.sum(), xi)
        with torch.no_grad():
            size = torch.where(over > 0, over + overshoot, over)
            g2 = grad.flatten(1).pow(2).sum(dim=1).clamp_min(1e-20)
            cur[idx] = (xi - _bcast(size * (1 + overshoot) / g2, xi) * grad).clamp(0, 1)
            todo[idx] = over > 0
    with torch.no_grad():
        inside = (lpips.features(cur) - phi0).norm(dim=1) <= bound
    if bool(inside.all()):
        return cur.detach()
    out = project_bisection(lpips, x, x_adv.detach(), phi0, bound)
    return torch.where(_bcast(inside, x), cur.detach(), out)


def project(name: str, lpips: LPIPS, x: torch.Tensor, x_adv: torch.Tensor, phi0: torch.Tensor, bound: float) -> torch.Tensor:
    """Apply projection `name` ("none", "bisection", "newton") onto {d(x, .) <= bound}."""
    if name == "none":
        return x_adv
    if name == "bisection":
        return project_bisection(lpips, x, x_adv, phi0, bound)
    if name == "newton":
        return project_newton(lpips, x, x_adv, phi0, bound)
    raise ValueError(f"unknown projection {name!r}; valid: {', '.join(PROJECTIONS)}")


def _check(bound: float, steps: int, projection: str) -> None:
    if bound < 0 or steps < 0:
        raise ValueError(f"bound and steps must be >= 0, got {bound}, {steps}")
    if projection not in PROJECTIONS:
        raise ValueError(f"unknown projection {projection!r}; valid: {', '.join(PROJECTIONS)}")


def _lpips_step(lpips: LPIPS, x_cur: torch.Tensor, phi_cur: torch.Tensor, direction: torch.Tensor, h: float,
                size: torch.Tensor | float, eps: float) -> torch.Tensor:
    """A step along the unit-l2 `direction` whose LPIPS length is about `size`: direction * size / |d phi / dt|,
    the derivative by a finite difference of length h."""
    with torch.no_grad():
        rate = (lpips.features(x_cur + h * direction) - phi_cur).norm(dim=1) / h
    size_t = size if isinstance(size, torch.Tensor) else torch.full_like(rate, size)
    return direction * _bcast(size_t / (rate + eps), direction)


def fast_lpa(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lpips: LPIPS, bound: float = 0.5, steps: int = 10, *,
             lam: float = 10.0, h: float = 0.1, step: float | None = None, kappa: float = float("inf"),
             projection: str = "none", mode: str | None = "eval", generator: torch.Generator | None = None) -> torch.Tensor:
    """Fast-LPA (PAT's training attack). x [B, C, H, W] in [0, 1], y int64 [B]. Step t of `steps`: step size
    step 0.1^(t/steps) (step defaults to bound) and penalty lam 0.1^(1 - t/steps). Returns x_adv, detached, in
    [0, 1]; within the bound only with a projection ("none" by default, as PAT trains)."""
    _check(bound, steps, projection)
    step = bound if step is None else step
    x = x.detach()
    with model_mode(model, mode):
        with torch.no_grad():
            phi0 = lpips.features(x)
        x_adv = _start(x, generator)
        for t in range(steps):
            size = step * 0.1 ** (t / steps)
            lam_t = lam * 0.1 ** (1 - t / steps)
            xa = x_adv.detach().requires_grad_(True)
            phi, logits = _phi_logits(model, lpips, xa)
            dist = (phi - phi0).norm(dim=1)
            objective = margin_loss(logits, y, kappa) - lam_t * F.relu(dist - bound)
            (grad,) = torch.autograd.grad(objective.sum(), xa)
            direction = _unit(grad)
            x_adv = (xa.detach() + _lpips_step(lpips, xa.detach(), phi.detach(), direction, h, size, 1e-4)).clamp(0, 1)
        return project(projection, lpips, x, x_adv.detach(), phi0, bound).detach()


def lpa(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lpips: LPIPS, bound: float = 0.5, steps: int = 40, *,
        rounds: int = 5, lam: float = 0.01, h: float = 0.1, step: float | None = None, kappa: float = 1.0,
        projection: str = "newton", mode: str | None = "eval", generator: torch.Generator | None = None) -> torch.Tensor:
    """LPA (evaluation). x [B, C, H, W] in [0, 1], y int64 [B]. `rounds` rounds of `steps` steps (step size
    step 0.1^(t/steps), step defaulting to bound); per-example penalty weight lam, x10 after a round that ended
    at d >= bound; an example stops when misclassified inside the bound. Returns x_adv (projected: inside the
    bound unless projection="none"), detached, in [0, 1]."""
    _check(bound, steps, projection)
    step = bound if step is None else step
    x = x.detach()
    with model_mode(model, mode):
        with torch.no_grad():
            phi0 = lpips.features(x)
        x_adv = _start(x, generator)
        lam_b = torch.full((x.shape[0],), lam, device=x.device)
        live = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        dist_all = torch.zeros(x.shape[0], device=x.device)
        for _ in range(rounds):
            for t in range(steps):
                idx = live.nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                size = step * 0.1 ** (t / steps)
                xa = x_adv[idx].detach().requires_grad_(True)
                phi, logits = _phi_logits(model, lpips, xa)
                dist = (phi - phi0[idx]).norm(dim=1)
                objective = margin_loss(logits, y[idx], kappa) - lam_b[idx] * F.relu(dist - bound)
                (grad,) = torch.autograd.grad(objective.sum(), xa)
                direction = _unit(grad)
                with torch.no_grad():
                    x_adv[idx] = (xa + _lpips_step(lpips, xa.detach(), phi.detach(), direction, h, size, 1e-8)).clamp(0, 1)
                    dist_all[idx] = dist.detach()
                    fooled = (logits.argmax(1) != y[idx]) & (dist <= bound)
                    live[idx] = ~fooled
            lam_b = torch.where(dist_all >= bound, lam_b * 10, lam_b)
            if not bool(live.any()):
                break
        return project(projection, lpips, x, x_adv.detach(), phi0, bound).detach()


def _first_order_step(model: nn.Module, lpips: LPIPS, x_cur: torch.Tensor, y: torch.Tensor, size: float,
                      cg_steps: int, h: float, kappa: float) -> torch.Tensor:
    """PPGD's step from x_cur: v solving (J^T J) v = grad (conjugate gradient), scaled to LPIPS length `size`."""
    xa = x_cur.detach().requires_grad_(True)
    phi, logits = _phi_logits(model, lpips, xa)
    (grad,) = torch.autograd.grad(margin_loss(logits, y, kappa).sum(), xa, retain_graph=True)

    def jtj(v: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            jv = (lpips.features(xa.detach() + h * v) - phi.detach()) / h
        (out,) = torch.autograd.grad(phi, xa, grad_outputs=jv, retain_graph=True)
        return out

    def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a * b).flatten(1).sum(dim=1)

    v = torch.zeros_like(xa)
    r = grad.detach().clone()
    p = r.clone()
    for i in range(cg_steps):
        rr = dot(r, r)
        if i > 0 and float(rr.max()) < 1e-1:
            break
        ap = jtj(p)
        a = rr / dot(p, ap).clamp_min(1e-20)
        v = v + _bcast(a, p) * p
        if i < cg_steps - 1:
            r = r - _bcast(a, ap) * ap
            p = r + _bcast(dot(r, r) / rr.clamp_min(1e-20), p) * p
    with torch.no_grad():
        jv_len = (lpips.features(xa.detach() + h * v) - phi.detach()).norm(dim=1) / h
        scale = size / jv_len.clamp_min(1e-20)
        still = grad.flatten(1).norm(dim=1) < 1e-4  # no useful gradient (likely already misclassified): stay
        scale = torch.where(still, torch.zeros_like(scale), scale)
        return (xa.detach() + _bcast(scale, v) * v).clamp(0, 1)


def ppgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lpips: LPIPS, bound: float = 0.5, steps: int = 40, *,
         cg_steps: int = 5, h: float = 1e-3, step: float | None = None, kappa: float = 1.0, projection: str = "newton",
         mode: str | None = "eval", generator: torch.Generator | None = None) -> torch.Tensor:
    """Perceptual PGD (evaluation). x [B, C, H, W] in [0, 1], y int64 [B]. `steps` first-order steps of LPIPS
    length `step` (default 2 bound / steps), each followed by the projection. Returns x_adv inside the bound
    (unless projection="none"), detached, in [0, 1]."""
    _check(bound, steps, projection)
    step = 2 * bound / max(steps, 1) if step is None else step
    x = x.detach()
    with model_mode(model, mode):
        with torch.no_grad():
            phi0 = lpips.features(x)
        x_adv = _start(x, generator)
        for _ in range(steps):
            x_adv = _first_order_step(model, lpips, x_adv, y, step, cg_steps, h, kappa)
            x_adv = project(projection, lpips, x, x_adv, phi0, bound)
        if steps == 0:  # no step taken: the start itself, inside the ball
            x_adv = project("bisection" if projection == "none" else projection, lpips, x, x_adv, phi0, bound)
        return x_adv.detach()


PerceptualAttack = Callable[..., torch.Tensor]
ATTACK_FUNCTIONS: dict[str, PerceptualAttack] = {"fast_lpa": fast_lpa, "lpa": lpa, "ppgd": ppgd}

__all__ = ["ATTACK_FUNCTIONS", "PROJECTIONS", "fast_lpa", "lpa", "margin_loss", "ppgd", "project", "project_bisection",
           "project_newton"]
