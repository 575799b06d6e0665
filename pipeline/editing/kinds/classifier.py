"""Classifier edit: move the identity along fitted attribute directions (the paper's classifier editing)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pipeline.core.config import WeightsPath
from pipeline.core.errors import DvaError, InputError
from pipeline.core.hashing import sha256_file
from pipeline.editing.editing import AttributeClassifier, classifier_edit
from pipeline.editing.kinds.base import EditKind, IdentityContext, IdentityEdit


class ClassifierEdit(EditKind):
    """Move the identity along fitted attribute directions (`fit_classifiers` output).

    `attributes` maps attribute names to scales: positive adds the attribute, negative removes it.
    """

    kind: Literal["classifier"]
    classifier: WeightsPath = "data/classifiers/classifier.safetensors"
    attributes: dict[str, float]

    def identity_edit(self, context: IdentityContext) -> tuple[IdentityEdit, dict]:
        path = Path(self.classifier)
        if not path.is_file():
            raise InputError(path, "attribute classifier not found (run `dva fit-classifiers` first)")
        classifier = AttributeClassifier.load(path)
        if classifier.dim != len(context.video_identity):
            raise InputError(path, f"classifier is for {classifier.dim}-d codes, the video has "
                                   f"{len(context.video_identity)}-d")
        try:
            classifier_edit(context.video_identity, classifier, self.attributes)
        except ValueError as exc:
            raise DvaError(f"{path}: {exc}") from None
        return (lambda z: classifier_edit(z, classifier, self.attributes)), {"classifier_sha256": sha256_file(path)}

    def weight_files(self) -> dict[str, Path]:
        return {"classifier": Path(self.classifier)}
