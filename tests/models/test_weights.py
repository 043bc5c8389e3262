"""``medssl weights import``: every published layout gives the source network's features; refusals leave nothing.

The source networks and checkpoint writers are ``tests/models/source_networks.py`` (our own code, written from the
sources at the commits its docstring names); each test below imports a checkpoint written as the source's training
code writes it and compares features with the source network's forward.
"""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.networks import nets
from typer.testing import CliRunner

from medssl import cli
from medssl.errors import CheckpointError, OutputError
from medssl.models import build_encoder, load_encoder, save_encoder
from medssl.models.encoders import ArchitectureOptions, encoder_spec
from medssl.models.weights import LAYOUT_NAMES, find_layout, import_weights, layout_rows

sys.path.insert(0, str(Path(__file__).parent))
import source_networks as sources  # noqa: E402

runner = CliRunner()
VOLUMES = torch.randn(2, 1, 40, 36, 32, generator=torch.Generator().manual_seed(0))


def source_checkpoint(layout: str, path: Path, seed: int = 0) -> torch.nn.Module:
    """The source network of ``layout`` with random weights and statistics, saved to ``path`` as its code saves it."""
    if layout == "yaware-densenet121":
        net = sources.randomize(sources.yaware_densenet121(), seed)
        sources.save_yaware(net, path, data_parallel=True)
    elif layout == "openbhb-kit-densenet121":
        net = sources.randomize(sources.kit_densenet121(), seed)
        sources.save_kit(net, path)
    elif layout == "eidoslab-resnet18":
        net = sources.randomize(sources.eidoslab_supcon_resnet("resnet18"), seed)
        sources.save_eidoslab(net, path)
    else:
        depth = int(layout.removeprefix("medicalnet-resnet"))
        net = sources.randomize(sources.medicalnet_resnet(depth, sources.MEDICALNET_SHORTCUTS[depth]), seed)
        sources.save_medicalnet(net, path)
    return net.eval()


def readme_snippet(folder: Path) -> torch.nn.Module:
    """The README's plain-MONAI loading code, as a user copies it."""
    spec = json.loads((folder / "encoder.json").read_text())
    network = getattr(nets, spec["network"])(**spec["kwargs"])
    for name in spec["identity_modules"]:
        parent, _, child = name.rpartition(".")
        setattr(network.get_submodule(parent), child, torch.nn.Identity())
    network.load_state_dict(torch.load(folder / "encoder.pt", weights_only=True))
    return network.eval()


@pytest.mark.parametrize("layout", sources.LAYOUTS)
def test_every_layout_gives_the_source_networks_features(tmp_path, layout):
    net = source_checkpoint(layout, tmp_path / "weights.pth")
    result = runner.invoke(
        cli.app,
        ["weights", "import", str(tmp_path / "weights.pth"), "--layout", layout, "--out", str(tmp_path / "enc")],
    )
    assert result.exit_code == 0, result.output
    with torch.no_grad():
        expected = sources.representation(layout, net, VOLUMES)
        imported = load_encoder(tmp_path / "enc").eval()(VOLUMES)
    assert imported.shape == expected.shape
    torch.testing.assert_close(imported, expected, rtol=1e-5, atol=1e-5)
    spec = json.loads((tmp_path / "enc" / "encoder.json").read_text())
    assert spec["source"]["layout"] == layout and spec["source"]["commit"] == find_layout(layout).commit
    assert spec["input"]["normalize"] in {"zscore", "zscore_volume", "none"}
    with torch.no_grad():
        plain = readme_snippet(tmp_path / "enc")(VOLUMES).flatten(1)
    if layout.startswith("medicalnet"):  # MONAI alone cannot build the dilated stages: load_encoder is needed
        assert spec["stage_dilations"] == [1, 1, 2, 4] and not torch.allclose(plain, expected, atol=1e-3)
    else:
        torch.testing.assert_close(plain, expected, rtol=1e-5, atol=1e-5)


def test_yaware_checkpoint_with_or_without_data_parallel_prefix_imports_the_same(tmp_path):
    net = sources.randomize(sources.yaware_densenet121(), 3).eval()
    sources.save_yaware(net, tmp_path / "plain.pth", data_parallel=False)
    sources.save_yaware(net, tmp_path / "wrapped.pth", data_parallel=True)
    first = import_weights(tmp_path / "plain.pth", "yaware-densenet121", tmp_path / "a").eval()
    second = import_weights(tmp_path / "wrapped.pth", "yaware-densenet121", tmp_path / "b").eval()
    with torch.no_grad():
        assert torch.equal(first(VOLUMES), second(VOLUMES))


def test_norm5_is_the_identity_in_training_mode_too(tmp_path):
    """y-aware has no norm5: a frozen BatchNorm would still differ from it in training mode (batch statistics)."""
    net = source_checkpoint("yaware-densenet121", tmp_path / "w.pth")
    encoder = import_weights(tmp_path / "w.pth", "yaware-densenet121", tmp_path / "enc")
    assert isinstance(encoder.network.features.norm5, torch.nn.Identity)
    net.train()
    with torch.no_grad():
        torch.testing.assert_close(encoder.train()(VOLUMES), sources.representation("yaware-densenet121", net, VOLUMES))


def test_an_imported_encoder_and_a_recipe_naming_the_same_keys_build_the_same_network():
    from medssl.methods import build_encoder_for
    from medssl.recipe import load_recipe

    for layout in sources.LAYOUTS:
        spec = find_layout(layout).spec()
        keys = next(row["network"] for row in layout_rows() if row["layout"] == layout).split()
        built = build_encoder_for(load_recipe("yaware_age", [*keys, "model.widths=null", "model.conv1_stride=2"]).model)
        assert (built.spec.name, built.spec.kwargs, built.spec.identity_modules, built.spec.stage_dilations) == (
            spec.name,
            spec.kwargs,
            spec.identity_modules,
            spec.stage_dilations,
        ), layout


def test_state_dict_layout_strips_prefixes_and_builds_the_named_network(tmp_path):
    encoder = build_encoder("resnet18", widths=[8, 16, 32, 64]).eval()
    head = {"head.0.weight": torch.zeros(4, 64)}
    state = {f"model.backbone.{key}": value for key, value in encoder.network.state_dict().items()}
    torch.save({"state_dict": {**state, **{f"model.{key}": value for key, value in head.items()}}}, tmp_path / "l.ckpt")
    result = runner.invoke(
        cli.app,
        ["weights", "import", str(tmp_path / "l.ckpt"), "--layout", "state-dict", "--encoder", "resnet18",
         "model.widths=[8,16,32,64]", "--ignore", "head.", "--out", str(tmp_path / "enc")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    with torch.no_grad():
        assert torch.equal(load_encoder(tmp_path / "enc").eval()(VOLUMES), encoder(VOLUMES))


def test_state_dict_prefix_is_stripped_as_a_prefix_not_as_characters(tmp_path):
    """``str.lstrip("backbone.")`` would also eat the ``c`` of ``conv1``."""
    encoder = build_encoder("alexnet")
    torch.save({f"backbone.{k}": v for k, v in encoder.network.state_dict().items()}, tmp_path / "w.pt")
    imported = import_weights(tmp_path / "w.pt", "state-dict", tmp_path / "enc", spec=encoder_spec("alexnet"))
    assert all(
        torch.equal(a, b) for a, b in zip(imported.network.state_dict().values(), encoder.network.state_dict().values())
    )


# ----------------------------------------------------------------------------- refusals
def refuse(tmp_path, *arguments: str, monkeypatch, capsys) -> str:
    monkeypatch.setattr(sys, "argv", ["medssl", "weights", "import", *arguments, "--out", str(tmp_path / "enc")])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    error = capsys.readouterr().err
    assert exit_info.value.code == 2, error
    assert error.startswith("error: ") and error.strip().count("\n") == 0, error
    assert not (tmp_path / "enc").exists()
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".enc")]  # no staging folder left
    return error


def test_wrong_layout_names_the_unmatched_keys_and_the_closest_layout(tmp_path, monkeypatch, capsys):
    source_checkpoint("medicalnet-resnet18", tmp_path / "m.pth")
    error = refuse(
        tmp_path, str(tmp_path / "m.pth"), "--layout", "medicalnet-resnet10", monkeypatch=monkeypatch, capsys=capsys
    )
    assert "does not fit layout medicalnet-resnet10" in error
    assert "closest layout: medicalnet-resnet18 (matches every key)" in error
    source_checkpoint("yaware-densenet121", tmp_path / "y.pth")
    error = refuse(
        tmp_path, str(tmp_path / "y.pth"), "--layout", "openbhb-kit-densenet121", monkeypatch=monkeypatch, capsys=capsys
    )
    assert "no state dict at 'model'" not in error and "closest layout: yaware-densenet121 (matches every key)" in error


def test_missing_extra_and_misshapen_keys_are_refused(tmp_path, monkeypatch, capsys):
    net = sources.randomize(sources.eidoslab_supcon_resnet("resnet18"), 0)
    sources.save_eidoslab(net, tmp_path / "full.pth")
    checkpoint = torch.load(tmp_path / "full.pth", weights_only=False)
    state = checkpoint["model"]

    def variant(name: str, model: dict) -> str:
        torch.save({**checkpoint, "model": model}, tmp_path / name)
        return str(tmp_path / name)

    missing = variant("missing.pth", {k: v for k, v in state.items() if k != "encoder.layer1.0.conv1.weight"})
    error = refuse(tmp_path, missing, "--layout", "eidoslab-resnet18", monkeypatch=monkeypatch, capsys=capsys)
    assert "1 keys of the network not in the file (layer1.0.conv1.weight)" in error
    extra = variant("extra.pth", {**state, "encoder.fc.weight": torch.zeros(2, 512)})
    error = refuse(tmp_path, extra, "--layout", "eidoslab-resnet18", monkeypatch=monkeypatch, capsys=capsys)
    assert "1 keys of the file not in the network (encoder.fc.weight)" in error
    shapes = variant("shapes.pth", {**state, "encoder.conv1.weight": torch.zeros(64, 1, 3, 3, 3)})
    error = refuse(tmp_path, shapes, "--layout", "eidoslab-resnet18", monkeypatch=monkeypatch, capsys=capsys)
    assert "1 shapes differ (conv1.weight (64, 1, 3, 3, 3) in the file, (64, 1, 7, 7, 7) in the network)" in error


def test_a_state_dict_of_other_widths_says_to_set_them_and_a_medssl_encoder_needs_no_import(
    tmp_path, monkeypatch, capsys
):
    narrow = build_encoder("resnet18", widths=[16, 32, 64, 128])
    torch.save(narrow.network.state_dict(), tmp_path / "narrow.pth")
    arguments = [str(tmp_path / "narrow.pth"), "--layout", "state-dict", "--encoder", "resnet18"]
    error = refuse(tmp_path, *arguments, monkeypatch=monkeypatch, capsys=capsys)
    assert "shapes differ" in error and "every key fits this network at other sizes: set its model.widths" in error
    assert "closest layout" not in error
    save_encoder(narrow, tmp_path / "run" / "encoder.pt")
    arguments = [str(tmp_path / "run" / "encoder.pt"), "--layout", "state-dict", "--encoder", "resnet18"]
    error = refuse(tmp_path, *arguments, monkeypatch=monkeypatch, capsys=capsys)
    assert "a medssl encoder already (encoder.json beside it): give it to --encoder as it is" in error


def test_files_that_are_not_checkpoints_are_refused_without_unpickling(tmp_path, monkeypatch, capsys):
    np.save(tmp_path / "volume.npy", np.zeros(3))
    error = refuse(
        tmp_path, str(tmp_path / "volume.npy"), "--layout", "yaware-densenet121", monkeypatch=monkeypatch, capsys=capsys
    )
    assert "not a PyTorch checkpoint" in error
    source_checkpoint("eidoslab-resnet18", tmp_path / "e.pth")
    (tmp_path / "truncated.pth").write_bytes((tmp_path / "e.pth").read_bytes()[:4096])
    error = refuse(
        tmp_path,
        str(tmp_path / "truncated.pth"),
        "--layout",
        "eidoslab-resnet18",
        monkeypatch=monkeypatch,
        capsys=capsys,
    )
    assert "not a PyTorch checkpoint" in error
    marker = tmp_path / "ran"
    (tmp_path / "code.pth").write_bytes(pickle.dumps(_Payload(str(marker)), protocol=2))
    error = refuse(
        tmp_path, str(tmp_path / "code.pth"), "--layout", "yaware-densenet121", monkeypatch=monkeypatch, capsys=capsys
    )
    assert "holds Python objects (posix.system" in error or "holds Python objects (nt.system" in error
    assert not marker.exists()


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_an_output_folder_that_holds_files_is_never_replaced(tmp_path):
    source_checkpoint("eidoslab-resnet18", tmp_path / "e.pth")
    (tmp_path / "enc").mkdir()
    (tmp_path / "enc" / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="already exists and is not an empty folder"):
        import_weights(tmp_path / "e.pth", "eidoslab-resnet18", tmp_path / "enc")
    assert [path.name for path in (tmp_path / "enc").iterdir()] == ["notes.txt"]
    (tmp_path / "empty").mkdir()
    import_weights(tmp_path / "e.pth", "eidoslab-resnet18", tmp_path / "empty")
    assert sorted(path.name for path in (tmp_path / "empty").iterdir()) == ["encoder.json", "encoder.pt"]


def test_unknown_layout_and_layout_options_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="--layout 'dino': expected one of yaware-densenet121"):
        import_weights(tmp_path / "x.pt", "dino", tmp_path / "enc")
    result = runner.invoke(
        cli.app,
        [
            "weights",
            "import",
            "x.pt",
            "--layout",
            "eidoslab-resnet18",
            "--encoder",
            "resnet18",
            "--out",
            str(tmp_path / "e"),
        ],
    )
    assert result.exit_code != 0 and not (tmp_path / "e").exists()


def test_layouts_command_lists_every_layout_the_importer_reads():
    result = runner.invoke(cli.app, ["weights", "layouts", "--json"])
    assert result.exit_code == 0, result.output
    listed = [row["layout"] for row in json.loads(result.output)]
    assert listed == list(LAYOUT_NAMES)
    assert set(sources.LAYOUTS) < set(listed)
    page = (Path(__file__).parents[2] / "docs" / "weights.md").read_text()  # the README links this page
    for layout in LAYOUT_NAMES:
        assert f"--layout {layout}" in page, layout


def test_medssl_encoder_files_of_before_load_unchanged(tmp_path):
    """encoder.json written before stage_dilations, input and source existed still loads."""
    encoder = build_encoder("resnet18", widths=[8, 8, 8, 8])
    save_encoder(encoder, tmp_path / "encoder.pt")
    spec = json.loads((tmp_path / "encoder.json").read_text())
    for key in ("stage_dilations", "input", "source"):
        spec.pop(key)
    (tmp_path / "encoder.json").write_text(json.dumps(spec))
    with torch.no_grad():
        assert torch.equal(load_encoder(tmp_path).eval()(VOLUMES), encoder.eval()(VOLUMES))


def test_shortcut_a_and_dilations_follow_medicalnet_in_a_recipe_built_network():
    options = ArchitectureOptions(bias_downsample=False, shortcut_type="A", stage_dilations=(1, 1, 2, 4))
    encoder = build_encoder("resnet18", options=options).eval()
    net = sources.medicalnet_resnet(18, "A").eval()
    sources.randomize(net, 1)
    encoder.network.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("conv_seg.")})
    with torch.no_grad():
        torch.testing.assert_close(encoder(VOLUMES), sources.representation("medicalnet-resnet18", net, VOLUMES))


# ----------------------------------------------------------------------------- fine-tuning an imported encoder
@pytest.mark.parametrize("layout", ["yaware-densenet121", "eidoslab-resnet18"])
def test_finetune_smoke_on_an_imported_encoder_needs_no_model_overrides(tmp_path, layout):
    source_checkpoint(layout, tmp_path / "w.pth")
    import_weights(tmp_path / "w.pth", layout, tmp_path / "enc")
    out = tmp_path / "ft"
    result = runner.invoke(
        cli.app, ["finetune", "finetune_diagnosis", "--encoder", str(tmp_path / "enc"), "--smoke", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert f"note: {layout} expects" in result.output  # the embedded cohort is neither VBM nor its shape
    trained = load_recipe_file(out / "recipe.yaml").model
    assert trained.encoder == find_layout(layout).encoder  # recipe.yaml says which network was fine-tuned
    results = json.loads((out / "finetune.json").read_text())
    assert {"internal_test", "external_test"} == set(results["summary"])


def test_finetune_of_a_medssl_run_on_an_own_cohort_needs_no_model_overrides(tmp_path, tiny_cohort):
    """README command 1's encoder (a narrow ResNet-18 of the embedded budget) on one's own cohort: its
    encoder.json says the network; the recipe's DenseNet121 is for training from scratch."""
    run = tmp_path / "run"
    result = runner.invoke(
        cli.app, ["pretrain", "yaware_age", "--smoke", "eval.after_pretrain=false", "--out", str(run)]
    )
    assert result.exit_code == 0, result.output
    out = tmp_path / "ft"
    result = runner.invoke(
        cli.app,
        [
            "finetune",
            "finetune_diagnosis",
            f"data.root={tiny_cohort}",
            "--encoder",
            str(run),
            "--smoke",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "the encoder carries its network: model.encoder=resnet18" in " ".join(result.output.split())
    assert load_recipe_file(out / "recipe.yaml").model.widths == load_recipe_file(run / "recipe.yaml").model.widths


def load_recipe_file(path: Path):
    from medssl.recipe import load_recipe

    return load_recipe(path)


def test_views_normalize_source_takes_the_imported_encoders_normalisation(tmp_path):
    from medssl.models.weights import resolve_normalization
    from medssl.recipe import load_recipe

    source_checkpoint("eidoslab-resnet18", tmp_path / "w.pth")
    spec = import_weights(tmp_path / "w.pth", "eidoslab-resnet18", tmp_path / "enc").spec
    recipe = load_recipe("finetune_diagnosis", ["views.normalize=source"])
    assert resolve_normalization(recipe.views, spec).normalize == "none"
    medssl_spec = build_encoder("alexnet").spec
    with pytest.raises(Exception, match="records no normalisation"):
        resolve_normalization(recipe.views, medssl_spec)
    pretraining = load_recipe("yaware_age", ["views.normalize=minmax"])
    assert resolve_normalization(recipe.views, medssl_spec, pretraining.views).normalize == "minmax"
    result = runner.invoke(
        cli.app, ["pretrain", "yaware_age", "views.normalize=source", "--smoke", "--out", str(tmp_path / "r")]
    )
    assert result.exit_code != 0 and "pre-training has no source encoder" in " ".join(str(result.exception).split())


def test_zscore_volume_matches_the_kits_normalize_step():
    """The kit's Normalize: (x - mean) / (std + 1e-8) over every voxel, population std; TorchIO's std is Bessel's."""
    import torchio as tio

    from medssl.data.views import normalization_transform

    volume = np.random.default_rng(0).gamma(2.0, size=(121, 145, 121)).astype(np.float32)
    volume[:20] = 0
    expected = sources.kit_preprocess(volume)
    padded = np.pad(volume[:, 8:136, :], ((3, 4), (0, 0), (3, 4)))  # the kit's crop and pad, done by the user
    image = tio.ScalarImage(tensor=torch.from_numpy(padded)[None])
    normalised = normalization_transform("zscore_volume")(tio.Subject(volume=image))["volume"].data[0].numpy()
    np.testing.assert_allclose(normalised, expected, rtol=1e-5, atol=1e-5)


def test_evaluate_an_imported_encoder_on_an_own_cohort_with_the_sources_normalisation(tmp_path, tiny_cohort):
    source_checkpoint("eidoslab-resnet18", tmp_path / "w.pth")
    import_weights(tmp_path / "w.pth", "eidoslab-resnet18", tmp_path / "enc")
    result = runner.invoke(
        cli.app,
        ["evaluate", str(tmp_path / "enc"), "--cohort", str(tiny_cohort), "views.normalize=source", "eval.folds=2"],
    )
    assert result.exit_code == 0, (result.output, result.exception)
    text = " ".join(result.output.split())
    assert "note: eidoslab-resnet18 expects" in text and "volumes are 16x16x16" in text
    assert "views.normalize is" not in text  # source resolved to the source's own (none)
    assert (tmp_path / "enc" / "eval" / "metrics.json").is_file()
