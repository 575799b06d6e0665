"""Import the paper's released checkpoint (and its attribute classifier) as this project's model files.

`dva import-reference epoch=51-step=1000000.ckpt models/dva_paper.safetensors` reads the authors'
Lightning checkpoint with PyTorch's weights-only unpickler (a file that needs any Python class is
refused and nothing in it runs), takes the EMA weights, maps every tensor onto the `paper` model and
its face networks (IR-SE50 identity, MobileNetV2-GDConv landmarks, BiSeNet parsing) and writes one
safetensors file with the UNet config, the reference's sampler conventions and the source's sha256.
`--classifier` also imports the reference's 40-attribute CelebA classifier for `kind: classifier` edits.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from pipeline.core.atomic import atomic_output_file
from pipeline.core.errors import InputError
from pipeline.core.hashing import sha256_file
from pipeline.model.checkpoint import config_from_json, save_model
from pipeline.model.reference_import import (
    IDENTITY_ENCODER,
    LANDMARK_ENCODER,
    map_reference_state,
    read_lightning_state,
)
from pipeline.model.unet import PRESETS, UNetConfig
from pipeline.runs.lineage import code_version

REFERENCE_ID_DIM = 512  # IR-SE50


def architecture(name_or_file: str) -> UNetConfig:
    """A preset name (`paper`) or a JSON file of `UNetConfig` fields."""
    if name_or_file in PRESETS:
        return PRESETS[name_or_file](id_dim=REFERENCE_ID_DIM)
    path = Path(name_or_file)
    if not path.is_file():
        raise InputError(path, f"no such architecture file (or preset: {', '.join(PRESETS)})")
    try:
        return config_from_json(path.read_text())
    except (ValueError, TypeError, KeyError) as exc:
        raise InputError(path, f"not a UNet config ({exc})") from None


def import_reference(
    checkpoint: Path,
    out: Path,
    config: UNetConfig,
    classifier: Path | None = None,
    classifier_out: Path | None = None,
) -> dict:
    """Convert the reference checkpoint (and classifier); nothing is written unless everything converts."""
    imported = map_reference_state(read_lightning_state(checkpoint), config, Path(checkpoint))
    attribute_classifier = None
    if classifier is not None:
        from pipeline.editing.classifiers import classifier_from_reference

        attribute_classifier = classifier_from_reference(read_lightning_state(classifier), Path(classifier))
    source = {"file": Path(checkpoint).name, "sha256": sha256_file(Path(checkpoint))}
    metadata = {
        "identity_encoder": IDENTITY_ENCODER,
        "landmark_encoder": LANDMARK_ENCODER,
        "conventions": "reference",
        "lineage": json.dumps({"imported_from": source, "code": code_version()}, sort_keys=True),
    }
    save_model(Path(out), imported.model, metadata, imported.encoders)
    summary = {"model": str(out), "source_sha256": source["sha256"], "encoder_tensors": len(imported.encoders)}
    if attribute_classifier is not None:
        target = Path(classifier_out or Path(out).with_name("classifier.safetensors"))
        with atomic_output_file(target) as temporary:
            attribute_classifier.save(temporary)
        summary |= {"classifier": str(target), "attributes": len(attribute_classifier.attributes)}
    return summary


def cli(
    checkpoint: Path = typer.Argument(..., help="The reference Lightning checkpoint (epoch=51-step=1000000.ckpt)."),
    out: Path = typer.Argument(..., help="Project model file to write (.safetensors)."),
    classifier: Path = typer.Option(None, "--classifier", help="The reference's CelebA attribute classifier."),
    classifier_out: Path = typer.Option(
        None, "--classifier-out", help="Imported classifier file (default: classifier.safetensors beside OUT)."
    ),
    config: str = typer.Option("paper", "--config", help="Architecture: a preset name or a JSON file of UNet fields."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No summary line."),
) -> None:
    summary = import_reference(checkpoint, out, architecture(config), classifier, classifier_out)
    if not quiet:
        typer.echo(json.dumps(summary))
