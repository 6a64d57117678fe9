"""training.precision and training.engine: device and mixed-precision selection, and one training step per objective
on the CPU."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="training extras (torch) are not installed")

from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from training.losses import OBJECTIVES, build_loss  # noqa: E402
from training.engine import train_one_epoch  # noqa: E402
from training.precision import autocast_dtype, make_scaler, training_device, use_amp  # noqa: E402


def test_amp_only_on_cuda() -> None:
    assert use_amp(torch.device("cuda", 0)) is True
    assert use_amp(torch.device("cpu")) is False
    assert make_scaler(torch.device("cpu")).is_enabled() is False


def test_amp_modes() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert autocast_dtype(cpu, "always") == torch.bfloat16 and autocast_dtype(cuda, "always") == torch.float16
    assert autocast_dtype(cpu, "never") is None and autocast_dtype(cuda, "never") is None
    # bfloat16 has float32's range: no loss scaling on the CPU.
    assert make_scaler(cpu, "always").is_enabled() is False


def test_training_device_follows_cuda_availability(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert training_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert training_device() == torch.device("cuda", 1)


def _toy_problem() -> tuple[torch.nn.Linear, torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR, DataLoader]:
    """A linear 5-grade classifier on 32 seeded points: model, SGD, a constant schedule and the loader."""
    torch.manual_seed(0)
    x = torch.randn(32, 6)
    y = (x[:, 0] * 1.5 + 2).round().clamp(0, 4).long()
    model = torch.nn.Linear(6, 5)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    return model, opt, sched, DataLoader(TensorDataset(x, y), batch_size=8)


def test_bfloat16_autocast_on_the_cpu_trains() -> None:
    model, opt, sched, loader = _toy_problem()
    losses = [train_one_epoch(model, loader, opt, sched, build_loss("ce"), e, progress=False, amp="always")
              for e in range(4)]
    assert losses[-1] < losses[0] and model.weight.dtype == torch.float32


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_cpu_epoch_lowers_the_loss_in_float32(objective: str) -> None:
    model, opt, sched, loader = _toy_problem()
    loss_fn = build_loss(objective)
    first = train_one_epoch(model, loader, opt, sched, loss_fn, 0, progress=False)
    for epoch in range(1, 5):
        last = train_one_epoch(model, loader, opt, sched, loss_fn, epoch, progress=False)
    assert last < first
    assert model.weight.dtype == torch.float32


class _Trunked(torch.nn.Module):
    """A classifier with a sequential trunk (``features``) of conv + BatchNorm blocks, like the registry's."""

    def __init__(self) -> None:
        super().__init__()
        block = lambda cin, cout: torch.nn.Sequential(  # noqa: E731
            torch.nn.Conv2d(cin, cout, 3, padding=1), torch.nn.BatchNorm2d(cout), torch.nn.ReLU())
        self.features = torch.nn.Sequential(block(3, 4), block(4, 4), block(4, 8))
        self.head = torch.nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def test_a_frozen_prefix_keeps_its_weights_and_batchnorm_statistics_while_the_rest_trains() -> None:
    from training.engine import freeze_prefix, param_groups

    torch.manual_seed(0)
    model = _Trunked()
    freeze_prefix(model, 2)
    frozen = {k: v.clone() for k, v in model.features[:2].state_dict().items()}
    free = {k: v.clone() for k, v in model.features[2].state_dict().items()}
    opt = torch.optim.AdamW(param_groups(model, 1e-2, 0.1), lr=1e-2, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    data = TensorDataset(torch.randn(16, 3, 8, 8) * 3 + 1, torch.randint(0, 5, (16,)))
    for epoch in range(2):
        train_one_epoch(model, DataLoader(data, batch_size=8), opt, sched, build_loss("ce"), epoch, progress=False)
        assert not any(m.training for i in range(2) for m in model.features[i].modules())  # eval again
        assert model.features[2].training and model.head.training
    for k, v in model.features[:2].state_dict().items():
        assert torch.equal(v, frozen[k]), k  # weights, running statistics and counts: untouched
    assert not torch.equal(model.features[2].state_dict()["1.running_mean"], free["1.running_mean"])
    assert not torch.equal(model.features[2].state_dict()["0.weight"], free["0.weight"])
    assert all(not p.requires_grad for p in model.features[:2].parameters())


def test_freezing_needs_a_trunk_and_leaves_part_of_it_to_train() -> None:
    from training.engine import freeze_prefix

    with pytest.raises(ValueError, match="whole trunk of 3 modules"):
        freeze_prefix(_Trunked(), 3)
    with pytest.raises(ValueError, match="sequential trunk"):
        freeze_prefix(torch.nn.Linear(2, 2), 1)
