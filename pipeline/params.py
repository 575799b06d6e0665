"""The whole `params.yaml`, composed from the sections each concern declares, validated once at the edge.

Stages that read only some sections validate a narrower view (:class:`pipeline.core.config.ParamsView`)
so that their code does not include the schemas of sections they never read; the edit, render and
evaluate stages and the workflows read this one.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError, field_validator, model_validator

from pipeline.core.config import VIDEO_ID_PATTERN, Section, read_params, safe_relative_path
from pipeline.core.config import parse_params as parse_schema
from pipeline.core.conventions import Conventions
from pipeline.core.errors import ParamsError
from pipeline.editing.kinds import EditSpec
from pipeline.editing.settings import EditParams, FitClassifiersParams, check_classifier_videos, check_label_paths
from pipeline.evaluation.settings import EvaluateParams
from pipeline.faces.settings import AlignParams, EncodeParams
from pipeline.model.checkpoint import model_conventions, model_resolution
from pipeline.model.inversion import InvertParams
from pipeline.model.settings import ModelParams, TrainParams, check_train_videos, training_videos
from pipeline.video.settings import ExtractParams, RenderParams, VideoParams, check_video_ids


class Params(Section):
    """The whole `params.yaml`."""

    # What every step follows: the project's choices, the reference's, or the checkpoint's own (auto).
    conventions: Conventions = "auto"
    videos: dict[str, VideoParams] = {}
    # Videos that only drive motion edits: extracted, aligned and encoded, never inverted or edited.
    drivers: dict[str, VideoParams] = {}
    extract: ExtractParams = ExtractParams()
    align: AlignParams = AlignParams()
    encode: EncodeParams = EncodeParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    invert: InvertParams = InvertParams()
    fit_classifiers: FitClassifiersParams = FitClassifiersParams()
    edit: EditParams = EditParams()
    edits: dict[str, EditSpec] = {}
    render: RenderParams = RenderParams()
    evaluate: EvaluateParams = EvaluateParams()

    @field_validator("videos", "drivers")
    @classmethod
    def _video_ids(cls, value: dict[str, VideoParams]) -> dict[str, VideoParams]:
        return check_video_ids(value)

    @field_validator("edits")
    @classmethod
    def _edit_names(cls, value: dict) -> dict:
        for name in value:
            if not VIDEO_ID_PATTERN.match(name):
                raise ValueError(f"edit name {name!r} must be a plain name (letters, digits, '_', '-', '.')")
        return value

    @field_validator("fit_classifiers")
    @classmethod
    def _label_paths_inside_data(cls, value: FitClassifiersParams) -> FitClassifiersParams:
        return check_label_paths(value)

    @model_validator(mode="after")
    def _drivers_known(self) -> "Params":
        for name, spec in self.edits.items():
            driver = spec.driven_by()
            if driver is not None and driver not in self.drivers and driver not in self.videos:
                try:
                    safe_relative_path(driver)
                except ValueError as exc:
                    raise ValueError(f"edits.{name}.driver: not a video id under drivers/videos, and {exc}") from None
        return self

    @model_validator(mode="after")
    def _train_videos_known(self) -> "Params":
        check_train_videos(self.train, self.videos)
        return self

    @model_validator(mode="after")
    def _classifier_videos_known(self) -> "Params":
        check_classifier_videos(self.fit_classifiers, self.videos)
        return self

    @property
    def train_videos(self) -> list[str]:
        """Videos the autoencoder trains on (all listed videos unless `train.videos` says otherwise)."""
        return training_videos(self.train, self.videos)

    def video_files(self) -> dict[str, dict[str, Path]]:
        """The files of `drivers:` and `videos:` by id, in the order a driver id is looked up."""
        return {section: {video_id: Path(video.path) for video_id, video in getattr(self, section).items()}
                for section in ("drivers", "videos")}


def for_checkpoint(params: Params, checkpoint: Path, conventions: Conventions | None = None,
                   source: str = "params.yaml", context: dict | None = None) -> Params:
    """`params` as a run of `checkpoint` from the first step needs them.

    `conventions` (a command-line choice) replaces the file's; `auto` becomes the model's own (`reference` for
    an imported model), whose profile then fills what the file leaves unset. The crops take the model's
    resolution; an explicit `model.resolution` that differs is an error naming both. `context`: as
    :func:`parse_params`'s (a one-off run's params keep their absolute weights paths).
    """
    explicit = params.model_dump(exclude_unset=True)
    chosen = conventions or params.conventions
    explicit["conventions"] = model_conventions(checkpoint) if chosen == "auto" else chosen
    resolution = model_resolution(checkpoint)
    model = explicit.setdefault("model", {})
    if model.get("resolution", resolution) != resolution:
        raise ParamsError(f"{source}: model.resolution is {model['resolution']} but {checkpoint} is a "
                          f"{resolution} px model: remove the setting or set it to {resolution}")
    model["resolution"] = resolution
    return parse_params(explicit, source, context)


def parse_params(raw: object, source: str = "params.yaml", context: dict | None = None) -> Params:
    """Validate an already-loaded params mapping; errors name the offending key.

    `context` is :data:`pipeline.core.config.ONE_OFF` for a one-off run (absolute weights paths allowed).
    """
    return parse_schema(raw, Params, source, context)


def load_params(path: Path, context: dict | None = None) -> Params:
    """Read and validate the whole `params.yaml` (`context` as :func:`parse_params`'s)."""
    return read_params(path, Params, context)


def packaged_defaults_file() -> Path:
    """The defaults shipped with the package (`pipeline/defaults/params.yaml`): the project's `params.yaml`
    without its videos, drivers and edits, for `dva edit` run outside a project folder."""
    return Path(__file__).resolve().parent / "defaults" / "params.yaml"


def parse_faces(text: str) -> str | list[int]:
    """`--faces`: `all`, `largest` or comma-separated track ids (`0,2`)."""
    if text in ("all", "largest"):
        return text
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise ParamsError(f"--faces {text!r}: expected all, largest or track ids such as 0,2") from None


def with_faces(params: Params, faces: str | list[int]) -> Params:
    """`params` with `align.faces` replaced (validated as the params file's value would be)."""
    try:
        faces = AlignParams(faces=faces).faces  # checked alone: the other settings were checked when loaded
    except ValidationError as exc:
        raise ParamsError(f"--faces: {exc.errors()[0]['msg']}") from None
    return params.model_copy(update={"align": params.align.model_copy(update={"faces": faces})})
