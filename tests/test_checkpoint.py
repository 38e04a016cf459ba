"""Training configuration and checkpoint files."""

from pathlib import Path

import pytest
import torch

from unet_fast.checkpoint import TrainConfig, load_checkpoint, load_model, save_checkpoint


def test_defaults_are_the_papers_recipe():
    config = TrainConfig()
    assert (config.optimizer, config.momentum, config.batch_size, config.tile) == ("sgd", 0.99, 1, 572)
    assert (config.w0, config.sigma, config.elastic_sigma) == (10.0, 5.0, 10.0)
    assert config.geometry.output_size(config.tile) == 388


@pytest.mark.parametrize("change, message", [
    (dict(tile=570), "tile 570 does not fit this U-Net.*Nearest valid sizes: 556 and 572"),
    (dict(optimizer="rmsprop"), "optimizer must be 'sgd' or 'adam'"),
    (dict(lr_decay="step"), "lr_decay must be 'none' or 'cosine'"),
    (dict(steps=0), "steps must be >= 1"),
    (dict(widths=()), "widths must be positive"),
    (dict(val_fraction=1.0), r"val_fraction must be in \[0, 1\)"),
])
def test_bad_configurations_are_named(change, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**change)


def test_cosine_decay_depends_on_the_step_alone():
    config = TrainConfig(steps=10, lr=0.5, lr_decay="cosine")
    assert config.learning_rate(0) == 0.5
    assert config.learning_rate(5) == pytest.approx(0.25)
    assert TrainConfig(lr=0.5).learning_rate(7) == 0.5


def test_warm_up_rises_linearly_then_the_schedule_takes_over():
    config = TrainConfig(steps=10, lr=0.8, lr_decay="cosine", warmup_steps=4)
    assert [config.learning_rate(step) for step in range(4)] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert config.learning_rate(5) == pytest.approx(0.4)  # the cosine's own value at step 5
    with pytest.raises(ValueError, match="warmup_steps must be >= 0"):
        TrainConfig(warmup_steps=-1)


def test_checkpoint_round_trip(tmp_path):
    config = TrainConfig(widths=(4, 8), tile=28, steps=3)
    model = config.build_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.rand(1, 1, 28, 28)).sum().backward()
    optimizer.step()
    save_checkpoint(tmp_path / "model.pt", config=config, model=model, optimizer=optimizer, step=3,
                    history={"loss": [1.0, 0.5, 0.25], "validation": []})
    checkpoint = load_checkpoint(tmp_path)  # a run folder names its model.pt
    assert checkpoint["config"] == config and checkpoint["step"] == 3
    assert checkpoint["history"]["loss"] == [1.0, 0.5, 0.25]
    restored = load_model(tmp_path / "model.pt")
    assert not restored.training
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(restored.state_dict()[name], tensor, rtol=0, atol=0)
    assert checkpoint["optimizer"]["state"]  # the momentum buffers came along


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "model.pt")
    (tmp_path / "model.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "model.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="is not a unet_fast checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save({"format": 1, "model": Path("an object")}, tmp_path / "objects.pt")
    with pytest.raises(ValueError, match="holds Python objects other than tensors") as error:
        load_checkpoint(tmp_path / "objects.pt")
    assert "weights_only" not in str(error.value)
    torch.save({"format": 1, "config": {"no_such_option": 3}}, tmp_path / "newer.pt")
    with pytest.raises(ValueError, match="configuration does not fit this unet_fast version"):
        load_checkpoint(tmp_path / "newer.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "other.pt").read_bytes()[:-40])
    with pytest.raises(ValueError, match="cannot read checkpoint .*cut.pt"):
        load_checkpoint(tmp_path / "cut.pt")
