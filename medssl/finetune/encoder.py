"""The pre-trained encoder fine-tuning starts from: loading it with the network it carries, and the
inputs of the pre-training run that made it (its ``recipe.yaml``, when beside it)."""

from __future__ import annotations

import json
from pathlib import Path

from medssl.config import ModelConfig
from medssl.errors import MedsslError
from medssl.methods import architecture_options
from medssl.models import Encoder, EncoderSpec, encoder_spec, load_encoder
from medssl.models.encoders import model_overrides
from medssl.recipe import Recipe, load_recipe, smoke_shape, with_overrides, with_source_normalization


def pretraining_recipe(source: str | Path) -> Recipe | None:
    """The recipe of the run that made the encoder ``source`` (its ``recipe.yaml``, when beside it)."""
    folder = Path(source) if Path(source).is_dir() else Path(source).parent
    try:
        return load_recipe(folder / "recipe.yaml") if (folder / "recipe.yaml").is_file() else None
    except MedsslError:
        return None


def smoke_at_pretraining_shape(recipe: Recipe, source: str | Path) -> Recipe:
    """A ``--smoke`` fine-tuning recipe at the cubic volume shape its encoder was pre-trained on:
    a smoke pre-training (16^3 for a ResNet) and a smoke fine-tuning (32^3 for the DenseNet121 of
    the shipped fine-tuning recipe) then chain without a shape warning."""
    pretraining = pretraining_recipe(source)
    shape = input_shape(pretraining) if pretraining is not None else imported_smoke_shape(source)
    if shape is None or len(set(shape)) != 1 or shape == input_shape(recipe):
        return recipe
    smoke = recipe.model_copy(deep=True)
    if smoke.data.root is None:
        smoke.data.synthetic = smoke.data.synthetic.model_copy(update={"shape": shape[0]})
    else:
        smoke.data.volume_shape = list(shape)
    return smoke


def imported_smoke_shape(source: str | Path) -> tuple[int, int, int] | None:
    """The ``--smoke`` shape of an encoder without a pre-training recipe (imported weights): the
    smallest its network takes, from its ``encoder.json``."""
    folder = Path(source) if Path(source).is_dir() else Path(source).parent
    try:
        name = json.loads((folder / "encoder.json").read_text())["name"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (smoke_shape(str(name)),) * 3


def pretraining_differences(source: str | Path, recipe: Recipe) -> list[str]:
    """Input settings of the pre-training run (its ``recipe.yaml``, when beside the encoder)
    that differ from the fine-tuning recipe: the encoder still loads, but sees other inputs."""
    pretraining = pretraining_recipe(source)
    if pretraining is None:
        return []
    notes = []
    if pretraining.views.normalize != recipe.views.normalize:
        notes.append(
            f"views.normalize is {recipe.views.normalize!r} but the encoder was pre-trained with {pretraining.views.normalize!r}"
        )
    shapes = [input_shape(pretraining), input_shape(recipe)]
    if None not in shapes and shapes[0] != shapes[1]:
        notes.append(f"volumes are {shapes[1]} but the encoder was pre-trained on {shapes[0]} (data.volume_shape)")
    return [f"warning: {note}." for note in notes]


def input_shape(recipe: Recipe) -> tuple[int, ...] | None:
    """The volume shape the encoder sees, when the recipe fixes it (resize, or the embedded cohort)."""
    if recipe.data.volume_shape:
        return tuple(recipe.data.volume_shape)
    return (recipe.data.synthetic.shape,) * 3 if recipe.data.root is None else None


# The architecture switches at their defaults: a note need not name them.
SWITCH_DEFAULTS = {
    "model.bias_downsample=true",
    "model.shortcut_type=B",
    "model.stage_dilations=[1,1,1,1]",
    "model.final_norm=true",
    "model.final_relu=true",
}


def load_pretrained_encoder(source: str | Path, recipe: Recipe) -> tuple[Encoder, Recipe, list[str]]:
    """Load ``encoder.pt`` (or a run folder holding it) as its ``encoder.json`` describes it.

    An encoder carries its network: the recipe's ``model`` section, which builds the networks
    trained from scratch, is set to the encoder's (returned with a note when it differed), so
    that ``recipe.yaml`` says which network was fine-tuned. ``views.normalize: source`` becomes
    the encoder's normalisation.

    Raises:
        CheckpointError: missing or corrupt file.
    """
    encoder = load_encoder(source)
    wanted = model_overrides(encoder.spec)
    had = model_overrides(encoder_spec_of(recipe.model))
    notes = []
    differing = [override for override in wanted if override not in had and override not in SWITCH_DEFAULTS]
    if differing:
        notes.append(
            f"the encoder carries its network: {' '.join(differing)} (from its encoder.json; "
            "the recipe's model section is for training from scratch)."
        )
    resolved = with_overrides(recipe, wanted, source=str(source), layer="encoder.json")
    resolved = with_source_normalization(resolved, encoder.spec, pretraining_recipe(source))
    return encoder, resolved, notes


def encoder_spec_of(model: ModelConfig) -> EncoderSpec:
    return encoder_spec(
        model.encoder, model.in_channels, model.conv1_stride, model.widths, options=architecture_options(model)
    )
