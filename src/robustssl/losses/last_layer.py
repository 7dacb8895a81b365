"""Closed-form per-example gradients of a supervised loss w.r.t. the classifier's last Linear.

For the ACS selectors of supervised adversarial training (Adv. CRAIG and Adv. GradMatch,
`craig` and `gradmatch` in coreset/acs.py): they rank examples by these gradients at
adversarial inputs (Dolatabadi et al., "Adversarial Coreset Selection for Efficient Robust Training", IJCV 2023, arXiv:2209.05785,
the method section's last-layer approximation of the per-example gradients of the robust
training objective; summarized in shared/reference/methods.md section 6).

For logits z = W h + b (W [C, d], b [C]) and a per-example loss L(z), dL/dW = delta h^T and
dL/db = delta with delta = dL/dz [C]. A loss that runs the head on several inputs of the same
example (TRADES: natural and adversarial) sums one outer product per input. So every
gradient here is a few batched outer products: no per-example autograd loop.

Row layout: [W.reshape(-1) (row-major, C*d), b (C)], the order of `HeadView.flat()` for one
Linear, so a row can be used as a step of the head's flat parameter vector.
The adversarial inputs are treated as given (Danskin): the attack is not differentiated.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

__all__ = ["ce_delta", "ce_gradients", "head_gradients", "trades_deltas", "trades_gradients"]


def head_gradients(
    deltas: list[torch.Tensor], features: list[torch.Tensor], bias: bool = True, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-example gradients of the last Linear: sum_k delta_k h_k^T (and sum_k delta_k for the bias).

    deltas: one [N, C] per head input (dL_i/dz at that input); features: the matching
    penultimate features [N, d]; weights: float [N] per-example loss weights or None.
    Returns [N, C*d (+ C)] in the dtype of the deltas.
    """
    if len(deltas) != len(features) or not deltas:
        raise ValueError(f"need one feature tensor per delta, got {len(deltas)} deltas and {len(features)} features")
    n, c = deltas[0].shape
    d = features[0].shape[1]
    for delta, h in zip(deltas, features):
        if delta.shape != (n, c) or h.shape != (n, d):
            raise ValueError(f"deltas must be [N, C]={n, c} and features [N, d]={n, d}, got {tuple(delta.shape)}, {tuple(h.shape)}")
    weight = sum(torch.einsum("nc,nd->ncd", delta, h.to(delta.dtype)) for delta, h in zip(deltas, features))
    rows = weight.reshape(n, c * d)  # type: ignore[union-attr]
    if bias:
        rows = torch.cat([rows, sum(deltas)], dim=1)  # type: ignore[list-item]
    if weights is not None:
        if weights.shape != (n,):
            raise ValueError(f"weights must be [N]={n} per-example values, got {tuple(weights.shape)}")
        rows = rows * weights.to(rows.dtype)[:, None]
    return rows


def ce_delta(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """d CE(z_i, y_i) / d z_i = softmax(z_i) - onehot(y_i); logits [N, C], labels int64 [N] -> [N, C]."""
    return torch.softmax(logits, dim=1) - F.one_hot(labels, logits.shape[1]).to(logits.dtype)


def ce_gradients(
    logits: torch.Tensor, features: torch.Tensor, labels: torch.Tensor, bias: bool = True, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-example gradients of w_i * CE(W h_i + b, y_i) w.r.t. (W, b) -> [N, C*d (+ C)].

    PGD-AT's objective when logits [N, C] and features [N, d] are taken at the adversarial
    inputs. Each row is the gradient of that example's own loss (not divided by N).
    """
    return head_gradients([ce_delta(logits, labels)], [features], bias, weights)


def trades_deltas(
    logits_nat: torch.Tensor, logits_adv: torch.Tensor, labels: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """dL_i/dz_nat and dL_i/dz_adv of L_i = CE(z_nat, y) + beta * KL(p || q), p = softmax(z_nat), q = softmax(z_adv).

    With l = log p - log q and KL_i = sum_c p_c l_c:
      dKL/dz_adv = q - p                      (the KL is a cross-entropy in q plus a constant)
      dKL/dz_nat = p * (l - KL_i)             (softmax Jacobian p_c (delta_ck - p_k) applied to l + 1)
    so dL/dz_nat = p - onehot(y) + beta * p * (l - KL_i) and dL/dz_adv = beta * (q - p).
    The KL is weighted by beta (the ACS code's selection uses beta^2, its defect 3).
    Returns two [N, C] tensors.
    """
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    log_p, log_q = F.log_softmax(logits_nat, dim=1), F.log_softmax(logits_adv, dim=1)
    p, q = log_p.exp(), log_q.exp()
    ratio = log_p - log_q
    kl = (p * ratio).sum(dim=1, keepdim=True)
    delta_nat = ce_delta(logits_nat, labels) + beta * p * (ratio - kl)
    return delta_nat, beta * (q - p)


def trades_gradients(
    logits_nat: torch.Tensor,
    features_nat: torch.Tensor,
    logits_adv: torch.Tensor,
    features_adv: torch.Tensor,
    labels: torch.Tensor,
    beta: float,
    bias: bool = True,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-example gradients of w_i * (CE(z_nat, y) + beta * KL(softmax z_nat || softmax z_adv)) w.r.t. (W, b).

    logits_* [N, C] and features_* [N, d] at the natural and the adversarial inputs (the same
    head on both, so both contribute: delta_nat h_nat^T + delta_adv h_adv^T). -> [N, C*d (+ C)].
    """
    delta_nat, delta_adv = trades_deltas(logits_nat, logits_adv, labels, beta)
    return head_gradients([delta_nat, delta_adv], [features_nat, features_adv], bias, weights)
