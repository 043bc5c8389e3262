"""Training checkpoints: atomic writes, safe loading (weights_only), clear errors for bad files."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import medssl.files
from medssl.errors import CheckpointError, OutputError
from medssl.train.checkpoint import CHECKPOINT_VERSION, load_checkpoint, restore_rng, restore_scaler, save_checkpoint


def tiny_training_state():
    method = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    optimizer = torch.optim.AdamW(method.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5**step)
    method(torch.randn(5, 3)).square().mean().backward()
    optimizer.step()
    scheduler.step()
    return method, optimizer, scheduler


def write_checkpoint(path, epoch=3, step=12):
    method, optimizer, scheduler = tiny_training_state()
    save_checkpoint(
        path,
        method=method,
        optimizer=optimizer,
        scheduler=scheduler,
        epoch=epoch,
        step=step,
        recipe_yaml="name: demo\n",
    )
    return method, optimizer, scheduler


def test_checkpoint_loads_with_weights_only_and_holds_everything_to_continue(tmp_path):
    path = tmp_path / "checkpoints" / "last.pt"
    method, optimizer, scheduler = write_checkpoint(path)
    state = torch.load(path, weights_only=True)
    assert state["version"] == CHECKPOINT_VERSION
    assert state["epochs_done"] == 3 and state["step"] == 12 and state["recipe"] == "name: demo\n"
    assert all(torch.equal(value, method.state_dict()[key]) for key, value in state["method"].items())
    assert state["method"].keys() == method.state_dict().keys()
    restored = torch.optim.AdamW(method.parameters(), lr=1.0)
    restored.load_state_dict(state["optimizer"])
    assert restored.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"] == 5e-3
    assert torch.equal(restored.state[method[0].weight]["exp_avg"], optimizer.state[method[0].weight]["exp_avg"])
    assert state["scheduler"]["last_epoch"] == scheduler.last_epoch == 1
    assert load_checkpoint(path).keys() == state.keys()


def test_restore_rng_continues_the_random_stream_of_the_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    torch.manual_seed(7)
    write_checkpoint(path)
    expected = torch.rand(4)
    torch.manual_seed(123)
    restore_rng(load_checkpoint(path))
    assert torch.equal(torch.rand(4), expected)


def test_failed_checkpoint_write_keeps_the_previous_file_and_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.pt"
    write_checkpoint(path, epoch=1)
    before = path.read_bytes()

    def disk_full(obj, stream):
        stream.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(medssl.files.torch, "save", disk_full)
    with pytest.raises(OutputError, match=f"no space left on device writing {re.escape(str(path))} "):
        write_checkpoint(path, epoch=2)
    assert path.read_bytes() == before
    assert load_checkpoint(path)["epochs_done"] == 1
    assert [entry.name for entry in path.parent.iterdir()] == ["last.pt"]


def test_a_full_disk_is_reported_as_such_not_as_torchs_unexpected_pos_error(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.pt"
    # /dev/full fails every write with ENOSPC, which torch.save itself turns into a RuntimeError.
    monkeypatch.setattr(medssl.files, "open_for_writing", lambda temporary: open("/dev/full", "wb"))
    with pytest.raises(OutputError, match=f"^no space left on device writing {re.escape(str(path))} "):
        write_checkpoint(path)
    assert list(path.parent.iterdir()) == []


def test_first_checkpoint_write_that_fails_leaves_nothing_behind(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.pt"
    monkeypatch.setattr(medssl.files.torch, "save", lambda obj, target: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        write_checkpoint(path)
    assert list(path.parent.iterdir()) == []


class InterruptedMidWrite:
    """A checkpoint file whose third write is cut by Ctrl-C after half its bytes went out."""

    def __init__(self, path):
        self.file = open(path, "wb")
        self.writes = 0

    def write(self, data) -> int:
        self.writes += 1
        if self.writes == 3:
            self.file.write(bytes(data)[: len(data) // 2])
            raise KeyboardInterrupt
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()


def test_ctrl_c_in_the_middle_of_a_checkpoint_write_stays_a_keyboard_interrupt(tmp_path, monkeypatch):
    # torch.save's zip writer, closing after the cut write, raises "unexpected pos" over it
    path = tmp_path / "checkpoints" / "last.pt"
    write_checkpoint(path, epoch=1)
    before = path.read_bytes()
    monkeypatch.setattr(medssl.files, "open_for_writing", InterruptedMidWrite)
    with pytest.raises(KeyboardInterrupt):
        write_checkpoint(path, epoch=2)
    assert path.read_bytes() == before and [entry.name for entry in path.parent.iterdir()] == ["last.pt"]


def test_truncated_checkpoint_is_a_checkpoint_error_naming_the_file(tmp_path):
    path = tmp_path / "last.pt"
    write_checkpoint(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"last\.pt: unreadable checkpoint"):
        load_checkpoint(path)


def test_foreign_state_dict_is_not_taken_for_a_medssl_checkpoint(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"state_dict": nn.Linear(2, 2).state_dict(), "epoch": 3}, path)
    with pytest.raises(CheckpointError, match=r"model\.pt: not a medssl checkpoint \(version 1 expected\)"):
        load_checkpoint(path)


class Payload:
    """Any pickled Python object: loading it would run code, so weights_only refuses it."""


def test_checkpoint_holding_arbitrary_python_objects_is_refused(tmp_path):
    path = tmp_path / "last.pt"
    torch.save({"version": CHECKPOINT_VERSION, "payload": Payload()}, path)
    with pytest.raises(CheckpointError, match="unreadable checkpoint"):
        load_checkpoint(path)


def test_missing_checkpoint_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        load_checkpoint(tmp_path / "checkpoints" / "last.pt")


def scaler_after_steps(overflows: int) -> torch.amp.GradScaler:
    """An fp16 loss scaler (on CPU, which torch.amp supports) whose scale and growth tracker
    have moved: one step without overflow, then ``overflows`` steps whose gradients overflow."""
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=3)
    weight = nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    for value in [1.0] + [float("inf")] * overflows:
        scaler.scale((weight * value).sum()).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
    return scaler


def test_fp16_loss_scale_round_trips_through_the_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    method, optimizer, scheduler = tiny_training_state()
    scaler = scaler_after_steps(overflows=2)
    assert scaler.get_scale() == 2.0**10  # halved twice: the state differs from a fresh scaler's
    save_checkpoint(
        path, method=method, optimizer=optimizer, scheduler=scheduler, epoch=1, step=3, recipe_yaml="", scaler=scaler
    )
    fresh = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=3)
    restore_scaler(load_checkpoint(path), fresh)
    assert fresh.state_dict() == scaler.state_dict()
    assert fresh.get_scale() == 2.0**10


def test_checkpoints_without_a_loss_scale_leave_the_scaler_at_its_initial_scale(tmp_path):
    path = tmp_path / "last.pt"
    method, optimizer, scheduler = tiny_training_state()
    disabled = torch.amp.GradScaler("cpu", enabled=False)  # fp32 / bf16 runs
    save_checkpoint(
        path, method=method, optimizer=optimizer, scheduler=scheduler, epoch=1, step=3, recipe_yaml="", scaler=disabled
    )
    state = load_checkpoint(path)
    assert "scaler" not in state
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    restore_scaler(state, scaler)
    assert scaler.get_scale() == 2.0**12


def test_a_run_saved_with_the_former_flat_method_section_resumes_without_refused_keys():
    import yaml

    from medssl.recipe import FLAT_METHOD_SECTION_MARKERS, dump_recipe, load_recipe
    from medssl.train.checkpoint import resume_differences

    current = dump_recipe(load_recipe("simclr"))
    saved = yaml.safe_load(current)
    # Every run's recipe.yaml held every method's keys while medssl had one method section for all.
    saved["method"] = {**{key: 0 for key in FLAT_METHOD_SECTION_MARKERS}, **saved["method"]}
    assert resume_differences(yaml.safe_dump(saved), current) == ([], [])
    saved["method"]["temperature"] = 0.5  # a key of simclr's own still counts
    refused, _ = resume_differences(yaml.safe_dump(saved), current)
    assert [change.split(":")[0] for change in refused] == ["method.temperature"]


def test_a_run_saved_before_a_method_key_was_renamed_resumes_without_a_spurious_difference():
    import yaml

    from medssl.recipe import FLAT_METHOD_SECTION_MARKERS, dump_recipe, load_recipe
    from medssl.train.checkpoint import resume_differences

    current = dump_recipe(load_recipe("dino"))
    saved = yaml.safe_load(current)
    method = saved["method"]
    # DINO's keys as medssl wrote them before they took the names of DINO's constructor
    method["temperature"], method["local_crops"] = method.pop("student_temperature"), method.pop("n_local_crops")
    assert resume_differences(yaml.safe_dump(saved), current) == ([], [])
    method["local_crops"] = 2  # a changed value is still refused, under the key's new name
    refused, _ = resume_differences(yaml.safe_dump(saved), current)
    assert [change.split(":")[0] for change in refused] == ["method.n_local_crops"]
    # a run of the flat method section, which held every method's keys under their names of that time
    flat = yaml.safe_load(current)
    flat["method"] = {**{key: 0 for key in FLAT_METHOD_SECTION_MARKERS}, **method, "local_crops": 4}
    assert resume_differences(yaml.safe_dump(flat), current) == ([], [])
