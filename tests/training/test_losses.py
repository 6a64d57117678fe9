"""training.losses: the ordinal objectives rank errors by distance and match hand-computed values."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch", reason="training extras (torch) are not installed")

from training.losses import OBJECTIVES, OrdinalLoss, build_loss, sord_targets, squared_emd  # noqa: E402


def _confident(grade: int, margin: float = 20.0) -> torch.Tensor:
    """Logits that put (almost) all mass on ``grade``."""
    logits = torch.zeros(1, 5)
    logits[0, grade] = margin
    return logits


def test_squared_emd_hand_computed() -> None:
    # All mass d grades away: the CDFs differ by 1 on d of the grades.
    y = torch.tensor([0])
    for d in range(5):
        assert float(squared_emd(_confident(d), y)) == pytest.approx(d, abs=1e-6)
    # Uniform prediction vs grade 2: CDF (0.2, 0.4, 0.6, 0.8, 1) vs (0, 0, 1, 1, 1).
    expected = 0.2**2 + 0.4**2 + 0.4**2 + 0.2**2
    assert float(squared_emd(torch.zeros(1, 5), torch.tensor([2]))) == pytest.approx(expected, abs=1e-6)


def test_sord_targets_are_soft_ordinal_distributions() -> None:
    q = sord_targets(torch.tensor([2]), 5, alpha=2.0)[0]
    w = [math.exp(-2.0 * (k - 2) ** 2) for k in range(5)]
    assert q.tolist() == pytest.approx([v / sum(w) for v in w], abs=1e-6)
    assert float(q.sum()) == pytest.approx(1.0) and int(q.argmax()) == 2


@pytest.mark.parametrize("objective", ["ce+emd", "sord", "ce+expected"])
def test_off_by_one_costs_less_than_off_by_three(objective: str) -> None:
    loss = build_loss(objective)
    y = torch.tensor([1])
    right, off1, off3 = (float(loss(_confident(g, 5.0), y)) for g in (1, 2, 4))
    assert right < off1 < off3


def test_plain_ce_does_not_see_the_distance() -> None:
    loss = build_loss("ce")
    y = torch.tensor([1])
    assert float(loss(_confident(2, 5.0), y)) == pytest.approx(float(loss(_confident(4, 5.0), y)), rel=1e-6)


def test_ce_emd_is_the_sum_of_its_terms() -> None:
    logits = torch.tensor([[0.3, -1.0, 2.0, 0.1, -0.5], [1.0, 0.0, 0.0, 0.0, 3.0]])
    y = torch.tensor([2, 0])
    ce = torch.nn.functional.cross_entropy(logits, y)
    assert float(build_loss("ce+emd")(logits, y)) == pytest.approx(float(ce + squared_emd(logits, y).mean()), rel=1e-6)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_losses_train_and_handle_half_precision(objective: str) -> None:
    logits = torch.randn(4, 5, requires_grad=True)
    loss = OrdinalLoss(objective, label_smoothing=0.05)(logits.half(), torch.tensor([0, 1, 3, 4]))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_unknown_objective_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown objective 'coral'; known: ce, ce\\+emd, sord, ce\\+expected"):
        build_loss("coral")


def test_ce_expected_regresses_the_expected_grade() -> None:
    logits = torch.tensor([[0.3, -1.0, 2.0, 0.1, -0.5], [1.0, 0.0, 0.0, 0.0, 3.0]])
    y = torch.tensor([2, 0])
    ce = torch.nn.functional.cross_entropy(logits, y)
    expected = (torch.softmax(logits, dim=1) * torch.arange(5.0)).sum(dim=1)
    want = ce + torch.nn.functional.smooth_l1_loss(expected, y.float())
    assert float(build_loss("ce+expected")(logits, y)) == pytest.approx(float(want), rel=1e-6)
