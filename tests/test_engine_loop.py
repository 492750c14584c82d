"""The shared training loop: it learns, resumes exactly, refuses foreign checkpoints and stops
on a non-finite loss without writing over the last good checkpoint."""
from __future__ import annotations

import time

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from meditok.engine.checkpoints import latest_checkpoint, list_checkpoints
from meditok.engine.logs import read_log
from meditok.engine.loop import Loop, LoopConfig, TrainingDiverged
from meditok.errors import CheckpointError

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n: int = 64) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    w = torch.randn(8, 1, generator=g)
    return TensorDataset(x, x @ w + 0.01 * torch.randn(n, 1, generator=g))


def _mse(model, batch):
    x, y = batch
    loss = nn.functional.mse_loss(model(x), y)
    return loss, {"mse": float(loss.detach())}


def _loop(tmp, steps, loss_fn=_mse, **kw):
    torch.manual_seed(1)
    cfg = LoopConfig(steps=steps, batch_size=8, lr=1e-1, warmup_steps=2, ckpt_every=5,
                     log_every=1, output_dir=str(tmp), progress=False, device="cpu", **kw)
    return Loop(nn.Linear(8, 1), loss_fn, _data(), cfg, fmt="test-v1")


def test_loop_learns_and_logs(tmp_path):
    loop = _loop(tmp_path / "a", 40)
    result = loop.fit()
    log = read_log(tmp_path / "a" / "train_log.jsonl")
    assert result["step"] == 40 and len(log) == 40
    assert log[-1]["mse"] < 0.1 * log[0]["mse"]
    assert log[0]["lr"] < log[5]["lr"]  # warm-up
    assert [p.name for p in list_checkpoints(tmp_path / "a")] == ["ckpt-step00000035.pt",
                                                                 "ckpt-step00000040.pt"]


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    full = _loop(tmp_path / "full", 17)
    full.fit()
    calls = []

    def killed_at_step_12(model, batch):  # dies between the step-10 checkpoint and the next
        calls.append(1)
        if len(calls) == 12:
            raise KeyboardInterrupt
        return _mse(model, batch)

    with pytest.raises(KeyboardInterrupt):
        _loop(tmp_path / "part", 17, killed_at_step_12).fit()
    resumed = _loop(tmp_path / "part", 17)
    resumed.fit()
    assert resumed.resumed_from == tmp_path / "part" / "ckpt-step00000010.pt"
    for a, b in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    steps = [r["step"] for r in read_log(tmp_path / "part" / "train_log.jsonl")]
    assert steps == list(range(1, 18))  # no duplicated or missing records


def test_foreign_checkpoint_and_nan_stop(tmp_path):
    _loop(tmp_path, 5).fit()
    other = _loop(tmp_path, 10)
    other.fmt = "another-family-v1"
    with pytest.raises(CheckpointError, match="not a another-family-v1"):
        other.fit()

    def boom(model, batch):
        loss, logs = _mse(model, batch)
        return loss * float("nan"), logs

    cfg = LoopConfig(steps=3, batch_size=8, output_dir=str(tmp_path / "nan"), progress=False,
                     device="cpu")
    with pytest.raises(TrainingDiverged, match="non-finite loss at step 1"):
        Loop(nn.Linear(8, 1), boom, _data(), cfg, fmt="test-v1").fit()
    assert latest_checkpoint(tmp_path / "nan") is None


def test_resume_with_more_steps_follows_the_longer_schedule(tmp_path):
    """Raising loop.steps and resuming stretches the cosine to the new total (it used to restore
    the old total from the checkpoint and train every added step at the final LR)."""
    _loop(tmp_path / "run", 10).fit()
    longer = _loop(tmp_path / "run", 20)
    longer.fit()
    assert longer.resumed_from == tmp_path / "run" / "ckpt-step00000010.pt"
    lrs = {r["step"]: r["lr"] for r in read_log(tmp_path / "run" / "train_log.jsonl") if "lr" in r}
    fresh = _loop(tmp_path / "fresh", 20)
    fresh.fit()
    ref = {r["step"]: r["lr"] for r in read_log(tmp_path / "fresh" / "train_log.jsonl") if "lr" in r}
    assert lrs[10] == pytest.approx(0.1 * 0.1)  # the 10-step run ended at min_lr_ratio x peak
    for step in range(11, 21):  # the added steps: the 20-step schedule's LR, not the old final one
        assert lrs[step] == pytest.approx(ref[step])
    assert lrs[11] > 3 * lrs[10]


def test_killed_session_keeps_its_cost_up_to_its_last_checkpoint(tmp_path):
    """sessions.jsonl (what a resumed model's wall time is summed from) must not forget a session
    that was killed: its row is kept current at every checkpoint and marked interrupted."""
    calls = []

    def killed_at_step_12(model, batch):
        calls.append(1)
        if len(calls) == 12:
            raise KeyboardInterrupt
        return _mse(model, batch)

    with pytest.raises(KeyboardInterrupt):
        _loop(tmp_path, 17, killed_at_step_12).fit()
    rows = read_log(tmp_path / "sessions.jsonl")
    assert len(rows) == 1 and rows[0]["interrupted"] is True
    assert (rows[0]["from_step"], rows[0]["to_step"]) == (0, 10) and rows[0]["wall_s"] >= 0
    resumed = _loop(tmp_path, 17)
    t0 = time.time()
    resumed.fit()
    sessions = resumed.end_session(tmp_path / "final", t0)
    assert [(r["from_step"], r["to_step"], r.get("interrupted", False)) for r in sessions] == [
        (0, 10, True), (10, 17, False)]  # the resumed session's checkpoint rows became one final row
    assert read_log(tmp_path / "sessions.jsonl") == sessions


def test_close_drops_the_ddp_wrapper_then_meets_the_other_ranks_then_leaves(tmp_path, monkeypatch):
    """torchrun teardown order: DDP wrapper dropped, barrier (only after a clean run: after a
    failure the other ranks may never reach it), then destroy_process_group — a wrapper freed
    after the group was destroyed hung one rank at exit now and then."""
    from meditok.engine import distributed
    from meditok.engine.distributed import DistInfo

    loop = _loop(tmp_path, 1)
    events = []
    monkeypatch.setattr(distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(distributed.dist, "barrier", lambda: events.append(("barrier", loop.ddp is loop.model)))
    monkeypatch.setattr(distributed.dist, "destroy_process_group",
                        lambda: events.append(("destroy", loop.ddp is loop.model)))
    loop.dist, loop.ddp = DistInfo(0, 2, 0, True), nn.Identity()  # as if wrapped by DDP
    loop.close()
    assert events == [("barrier", True), ("destroy", True)]
    events.clear()
    loop.ddp = nn.Identity()
    loop.close(clean=False)
    assert events == [("destroy", True)]
    events.clear()
    loop.dist = DistInfo(0, 2, 0, False)  # a group this process joined (a test harness's): left alone
    loop.close()
    assert events == []
