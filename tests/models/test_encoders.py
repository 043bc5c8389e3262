"""Encoders: feature sizes, heads, and encoder.pt files usable without medssl."""

from __future__ import annotations

import json

import pytest
import torch
from monai.networks import nets

from medssl.errors import CheckpointError, RecipeError
from medssl.models import DINOHead, ProjectionHead, build_encoder, encoder_spec, load_encoder, save_encoder


@pytest.mark.parametrize(
    "name, size, feature_dim",
    [
        ("resnet18", 16, 512),
        ("resnet34", 16, 512),
        ("resnet50", 16, 2048),
        ("densenet121", 32, 1024),
        ("alexnet", 16, 128),
    ],
)
def test_encoder_returns_flat_features_of_the_recorded_size(name, size, feature_dim):
    encoder = build_encoder(name).eval()
    with torch.no_grad():
        features = encoder(torch.randn(2, 1, size, size, size))
    assert features.shape == (2, feature_dim) == (2, encoder.feature_dim)


def test_resnet_stem_is_strided_by_default():
    assert encoder_spec("resnet18").kwargs["conv1_t_stride"] == 2
    assert build_encoder("resnet18").network.conv1.stride == (2, 2, 2)


def test_projection_head_shapes_and_batch_norm():
    head = ProjectionHead(512, hidden_dim=64, out_dim=16, layers=3, batch_norm=True)
    assert head(torch.randn(4, 512)).shape == (4, 16)
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in head.modules()) == 2
    assert DINOHead(512, hidden_dim=32, bottleneck_dim=16, out_dim=50)(torch.randn(3, 512)).shape == (3, 50)


def test_saved_encoder_loads_into_a_plain_monai_network(tmp_path):
    encoder = build_encoder("densenet121").eval()
    weights, spec_path = save_encoder(encoder, tmp_path / "encoder.pt")
    spec = json.loads(spec_path.read_text())
    network = getattr(nets, spec["network"])(**spec["kwargs"])
    for name in spec["identity_modules"]:
        parent, _, child = name.rpartition(".")
        setattr(network.get_submodule(parent), child, torch.nn.Identity())
    network.load_state_dict(torch.load(weights, weights_only=True))
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.allclose(network.eval()(x), encoder(x), atol=1e-6)


def test_load_encoder_round_trips_and_checks_the_architecture(tmp_path):
    encoder = build_encoder("resnet18").eval()
    save_encoder(encoder, tmp_path / "encoder.pt")
    again = load_encoder(tmp_path).eval()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(again(x), encoder(x))
    with pytest.raises(CheckpointError) as error:
        load_encoder(tmp_path / "encoder.pt", expected=encoder_spec("resnet50"))
    assert str(error.value).endswith(
        "encoder does not match the recipe: it was built with model.encoder=resnet18 (the recipe has model.encoder=resnet50)"
    )
    narrow = encoder_spec("resnet18", widths=[8, 16, 32, 64], conv1_stride=1)
    with pytest.raises(CheckpointError) as error:
        load_encoder(tmp_path / "encoder.pt", expected=narrow)
    assert "it was built with model.conv1_stride=2 model.widths=null (the recipe has model.conv1_stride=1" in str(
        error.value
    )


def test_model_overrides_build_the_architecture_they_describe():
    from medssl.models.encoders import model_overrides
    from medssl.recipe import load_recipe

    for spec in (
        encoder_spec("densenet121", in_channels=2),
        encoder_spec("resnet34", conv1_stride=1, widths=[4, 8, 8, 8]),
    ):
        model = load_recipe("yaware_age", model_overrides(spec)).model
        rebuilt = encoder_spec(model.encoder, model.in_channels, model.conv1_stride, model.widths)
        assert rebuilt == spec


def test_load_encoder_errors_are_clear(tmp_path):
    with pytest.raises(CheckpointError, match="encoder weights not found"):
        load_encoder(tmp_path / "encoder.pt")
    (tmp_path / "README.md").write_text("# a run")
    with pytest.raises(CheckpointError, match=r"README\.md: not an encoder; expected the encoder\.pt of a run"):
        load_encoder(tmp_path / "README.md")
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "encoder.pt")
    with pytest.raises(CheckpointError, match="encoder description not found"):
        load_encoder(tmp_path / "encoder.pt")
    (tmp_path / "encoder.json").write_text(json.dumps(encoder_spec("resnet18").__dict__))
    with pytest.raises(CheckpointError, match="weights do not fit resnet18"):
        load_encoder(tmp_path / "encoder.pt")


def test_unknown_encoder_name_lists_the_choices():
    with pytest.raises(RecipeError, match="model.encoder = .vit.: expected one of resnet10, resnet18"):
        build_encoder("vit")


@pytest.mark.parametrize("widths", [[8, 16], [8, 16, 32, 0]])
def test_resnet_widths_must_be_four_positive_stage_widths(widths):
    with pytest.raises(RecipeError, match=r"expected 4 positive stage widths"):
        build_encoder("resnet18", widths=widths)


@pytest.mark.parametrize("name", ["densenet121", "alexnet"])
def test_a_stem_stride_is_refused_for_encoders_without_a_resnet_stem(name):
    with pytest.raises(RecipeError, match=f"only ResNet encoders take a stem stride, not '{name}'"):
        build_encoder(name, conv1_stride=1)


def saved_activation_bytes(encoder, x) -> int:
    """Bytes autograd keeps from the forward pass for the backward pass."""
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        encoder(x).square().sum().backward()
    return total


def one_sgd_step(encoder, x) -> dict[str, torch.Tensor]:
    optimizer = torch.optim.SGD(encoder.parameters(), lr=0.1)
    encoder.train()
    encoder(x).square().mean().backward()
    optimizer.step()
    return {key: value.detach().clone() for key, value in encoder.state_dict().items()}


@pytest.mark.parametrize("name, size", [("resnet18", 16), ("densenet121", 32)])
def test_activation_checkpointing_gives_the_same_update_and_running_statistics(name, size):
    x = torch.randn(2, 1, size, size, size)
    torch.manual_seed(0)
    plain = build_encoder(name)
    torch.manual_seed(0)
    checkpointed = build_encoder(name, activation_checkpointing=True)
    expected, actual = one_sgd_step(plain, x), one_sgd_step(checkpointed, x)
    assert expected.keys() == actual.keys()  # encoder.pt keeps MONAI's keys
    for key, value in expected.items():
        # BatchNorm buffers included: the recomputation in backward must not update them a second time
        assert torch.allclose(actual[key].float(), value.float(), rtol=1e-4, atol=1e-6), key


@pytest.mark.parametrize("name, size", [("resnet18", 16), ("densenet121", 32)])
def test_activation_checkpointing_keeps_fewer_activations_for_backward(name, size):
    x = torch.randn(2, 1, size, size, size)
    plain = saved_activation_bytes(build_encoder(name).train(), x)
    checkpointed = saved_activation_bytes(build_encoder(name, activation_checkpointing=True).train(), x)
    assert checkpointed < 0.6 * plain


def test_activation_checkpointing_is_off_outside_training_and_leaves_no_trace():
    encoder = build_encoder("resnet18", activation_checkpointing=True).eval()
    x = torch.randn(2, 1, 16, 16, 16)
    assert saved_activation_bytes(encoder, x) == saved_activation_bytes(build_encoder("resnet18").eval(), x)
    encoder.train()
    encoder(x).sum().backward()
    assert all("forward" not in stage.__dict__ for stage in encoder.network.children())


def test_an_encoder_is_saved_under_a_pt_name_only(tmp_path):
    with pytest.raises(ValueError, match=r"myenc: an encoder is saved to a \.pt file"):
        save_encoder(build_encoder("resnet18", widths=[4, 4, 4, 4]), tmp_path / "myenc")
    assert list(tmp_path.iterdir()) == []


def test_a_projection_head_has_at_least_its_output_layer():
    from medssl.models import ProjectionHead

    assert len([m for m in ProjectionHead(8, 16, 4, layers=1).modules() if isinstance(m, torch.nn.Linear)]) == 1
    with pytest.raises(ValueError, match="layers=0, expected at least 1"):
        ProjectionHead(8, 16, 4, layers=0)
