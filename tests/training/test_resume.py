"""training.checkpoint.resume_from: model, optimizer and scheduler state and the bookkeeping come back from last.pt."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from training.checkpoint import resume_from


def test_resume_restores_state(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 ** step)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    sched.step()
    last = tmp_path / "last.pt"
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "epoch": 4, "best_auc": 0.8, "stale": 1, "history": json.dumps([{"epoch": 4}])}, last)
    fresh = torch.nn.Linear(3, 2)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    fresh_sched = torch.optim.lr_scheduler.LambdaLR(fresh_opt, lambda step: 0.5 ** step)
    start, best, stale, history = resume_from(last, fresh, fresh_opt, fresh_sched, "best_auc")
    assert (start, best, stale, history) == (5, 0.8, 1, [{"epoch": 4}])
    assert torch.equal(fresh.weight, model.weight)
    assert fresh_sched.last_epoch == sched.last_epoch and fresh_opt.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
