"""finetune.encoder: loading errors, the network an encoder carries, and the inputs it was pre-trained on."""

from __future__ import annotations

import pytest

from medssl.cli import main
from medssl.errors import CheckpointError
from medssl.finetune.encoder import load_pretrained_encoder
from medssl.models import build_encoder, save_encoder
from medssl.recipe import Recipe, dump_recipe, load_recipe, smoke_recipe

from .helpers import tiny_recipe


def test_an_encoder_carries_its_network_whatever_the_recipes_model_section(tmp_path, tiny_cohort):
    """The recipe's model section builds from-scratch networks; a pre-trained encoder is built from its encoder.json,
    the recipe set to it (recipe.yaml says which network was fine-tuned) and one note names what changed."""
    encoder = build_encoder("resnet18", widths=[8, 8, 16, 16])
    save_encoder(encoder, tmp_path / "encoder.pt")
    recipe = tiny_recipe(tiny_cohort)
    recipe.model.encoder = "densenet121"
    loaded, resolved, notes = load_pretrained_encoder(tmp_path, recipe)
    assert loaded.spec == encoder.spec
    assert (resolved.model.encoder, resolved.model.widths) == ("resnet18", [8, 8, 16, 16])
    assert notes == [
        "the encoder carries its network: model.encoder=resnet18 model.conv1_stride=2 model.widths=[8,8,16,16] "
        "(from its encoder.json; the recipe's model section is for training from scratch)."
    ]
    recipe.model.encoder, recipe.model.widths = "resnet18", [8, 8, 16, 16]
    assert load_pretrained_encoder(tmp_path, recipe)[2] == []


def test_the_recipe_of_a_fine_tuned_encoder_still_says_where_each_value_came_from(tmp_path):
    save_encoder(build_encoder("resnet18", widths=[8, 8, 16, 16]), tmp_path / "encoder.pt")
    recipe = load_recipe("finetune_diagnosis", ["finetune.epochs=3", "views.normalize=source"])
    (tmp_path / "recipe.yaml").write_text("views:\n  normalize: minmax\n")  # the pre-training run's
    resolved = load_pretrained_encoder(tmp_path, recipe)[1]
    lines = {line.strip().split(":")[0]: line for line in dump_recipe(resolved).splitlines() if "#" in line}
    assert lines["widths"].endswith("# encoder.json") and lines["encoder"].endswith("# encoder.json")
    assert lines["epochs"].endswith("# command line")
    assert lines["normalize"].strip() == "normalize: minmax  # the encoder's (views.normalize: source)"
    assert resolved.views.normalize == "minmax"
    # an encoder of its own widths nulls the recipe's: that value came from encoder.json too
    save_encoder(build_encoder("alexnet"), tmp_path / "alexnet" / "encoder.pt")
    resolved = load_pretrained_encoder(tmp_path / "alexnet", load_recipe("finetune_diagnosis"))[1]
    assert "  widths: null  # encoder.json" in dump_recipe(resolved).splitlines()


def test_missing_and_corrupt_encoder_files_are_clear_errors(tmp_path, tiny_cohort):
    recipe = tiny_recipe(tiny_cohort)
    with pytest.raises(CheckpointError, match="encoder weights not found"):
        load_pretrained_encoder(tmp_path / "nothing" / "encoder.pt", recipe)
    save_encoder(build_encoder("resnet18"), tmp_path / "encoder.pt")
    (tmp_path / "encoder.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="cannot be read as a state dict") as error:
        load_pretrained_encoder(tmp_path / "encoder.pt", recipe)
    assert "\n" not in str(error.value)
    (tmp_path / "encoder.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="not a medssl encoder description"):
        load_pretrained_encoder(tmp_path / "encoder.pt", recipe)


def test_cli_prints_an_encoder_error_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(
        "sys.argv", ["medssl", "finetune", "finetune_diagnosis", "--encoder", str(tmp_path / "missing.pt")]
    )
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and "missing.pt: encoder weights not found" in lines[0]


def test_pretraining_run_with_other_inputs_gives_a_warning(tmp_path, tiny_cohort):
    from medssl.finetune.encoder import pretraining_differences
    from medssl.recipe import dump_recipe

    pretraining = Recipe.model_validate(
        {"model": {"encoder": "resnet18"}, "views": {"normalize": "minmax"}, "data": {"synthetic": {"shape": 32}}}
    )
    (tmp_path / "recipe.yaml").write_text(dump_recipe(pretraining))
    recipe = tiny_recipe(tiny_cohort)
    recipe.data.volume_shape = [16, 16, 16]
    notes = pretraining_differences(tmp_path, recipe)
    assert len(notes) == 2
    assert "'minmax'" in notes[0] and "(32, 32, 32)" in notes[1]
    recipe.views.normalize, recipe.data.volume_shape = "minmax", [32, 32, 32]
    assert pretraining_differences(tmp_path / "encoder.pt", recipe) == []


def test_smoke_fine_tuning_takes_the_cubic_shape_its_encoder_was_pre_trained_on(tmp_path, tiny_cohort):
    from medssl.finetune.encoder import pretraining_differences, smoke_at_pretraining_shape
    from medssl.recipe import dump_recipe

    pretraining = smoke_recipe(load_recipe("simclr"))  # 16^3
    (tmp_path / "recipe.yaml").write_text(dump_recipe(pretraining))
    smoke = smoke_recipe(load_recipe("finetune_diagnosis", ["profile=paper"]))  # DenseNet121: 32^3
    assert smoke.data.synthetic.shape == 32 and pretraining_differences(tmp_path, smoke) != []
    aligned = smoke_at_pretraining_shape(smoke, tmp_path / "encoder.pt")
    assert aligned.data.synthetic.shape == 16 and pretraining_differences(tmp_path, aligned) == []
    assert smoke.data.synthetic.shape == 32  # the given recipe is not modified
    on_a_folder = smoke_at_pretraining_shape(tiny_recipe(tiny_cohort), tmp_path)
    assert on_a_folder.data.volume_shape == [16, 16, 16]
    # no recipe beside the encoder, or a shape that is not a cube: unchanged
    assert smoke_at_pretraining_shape(smoke, tmp_path / "elsewhere" / "encoder.pt") is smoke
    pretraining.data.volume_shape = [16, 20, 16]
    (tmp_path / "recipe.yaml").write_text(dump_recipe(pretraining))
    assert smoke_at_pretraining_shape(smoke, tmp_path) is smoke
