"""Typed, validated `params.yaml`: validated once at the CLI edge, then passed down as objects."""

from __future__ import annotations

import math
import re
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.core.errors import ParamsError

VIDEO_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class _Section(BaseModel):
    # inf/nan are valid YAML (.inf, .nan) but meaningless for every parameter here, and slip
    # through range checks (nan compares false, inf passes ge=0) to crash or silently misbehave.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def safe_relative_path(value: str, root: str | tuple[str, ...] = "data") -> str:
    """Reject paths that are absolute or escape the project's `root` folder(s); return the normalised path.

    Paths in params files and manifests are data, and data must not point the pipeline at files
    outside the project (a symlink under `data/` or `models/` is the way to use files kept elsewhere).
    """
    roots = (root,) if isinstance(root, str) else root
    where = " or ".join(f"{name}/" for name in roots)
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts:
        raise ValueError(f"path {value!r} must be relative and stay inside {where}")
    if path.parts[:1] not in [(name,) for name in roots]:
        raise ValueError(f"path {value!r} must lie under {where}")
    return str(path)


WEIGHT_ROOTS = ("models", "data")


def _data_path(value: str | None) -> str | None:
    return None if value is None else safe_relative_path(value)


def _weights_path(value: str | None) -> str | None:
    return None if value is None else safe_relative_path(value, WEIGHT_ROOTS)


DataPath = Annotated[str, AfterValidator(_data_path)]
WeightsPath = Annotated[str, AfterValidator(_weights_path)]


class VideoParams(_Section):
    path: str

    @field_validator("path")
    @classmethod
    def _inside_data(cls, value: str) -> str:
        return safe_relative_path(value)


class ExtractParams(_Section):
    max_frames: int | None = Field(default=None, ge=1)


class AlignParams(_Section):
    backend: Literal["dlib", "face_alignment"] = "dlib"
    fan_weights: WeightsPath | None = None
    detector_upsample: int = Field(default=1, ge=0, le=4)
    detection_threshold: float = 0.5
    face_index: int = Field(default=0, ge=0)
    max_gap: int = Field(default=5, ge=0)
    smooth_center_sigma: float = Field(default=1.0, ge=0)
    smooth_vector_sigma: float = Field(default=3.0, ge=0)
    mask_feather: float = Field(default=0.04, ge=0, le=0.5)
    # BiSeNet weights (e.g. an imported reference model): face masks from parsing (the reference's video
    # foreground) instead of the landmark outline.
    parsing_weights: WeightsPath | None = None


class EncodeParams(_Section):
    backend: Literal["dlib", "arcface", "irse50"] = "dlib"
    arcface_weights: WeightsPath | None = None
    identity_weights: WeightsPath | None = None
    landmark_backend: Literal["dlib", "mobilenet"] = "dlib"
    landmark_weights: WeightsPath | None = None
    device: str = "auto"


class ModelParams(_Section):
    preset: Literal["tiny", "paper"] = "tiny"
    resolution: int | None = Field(default=None, ge=16)
    base_channels: int | None = Field(default=None, ge=8)
    channel_mults: tuple[int, ...] | None = None
    num_res_blocks: int | None = Field(default=None, ge=1)
    attention_resolutions: tuple[int, ...] | None = None
    embed_dim: int | None = Field(default=None, ge=8)
    dropout: float | None = Field(default=None, ge=0, lt=1)
    # DDIM conventions saved with the trained model (pipeline/model/diffusion.SamplerSettings); the reference
    # code clips the predicted x0 and starts inversion at the first timestep (`first_timestep`).
    clip_x0: bool = False
    inversion_start: Literal["clean", "first_timestep"] = "clean"

    @field_validator("resolution")
    @classmethod
    def _power_of_two(cls, value: int | None) -> int | None:
        # A field validator, so the error names `model.resolution`, not just `model`.
        if value is not None and value & (value - 1):
            raise ValueError("resolution must be a power of two")
        return value

    @property
    def crop_size(self) -> int:
        """Side of the aligned crops: the model resolution (preset default when not overridden)."""
        if self.resolution is not None:
            return self.resolution
        return {"tiny": 64, "paper": 256}[self.preset]


class TrainParams(_Section):
    videos: list[str] | None = None
    # Identity code each training frame is conditioned on: its own (the reference) or its video's mean.
    identity_code: Literal["frame", "video_mean"] = "frame"
    # Standardise the landmark input of the face-code head on the training data (the reference: raw features).
    standardise_landmarks: bool = True
    # BiSeNet weights: L_reg inside the parsed foreground (the reference) instead of the align stage's mask.
    parsing_weights: WeightsPath | None = None
    steps: int = Field(default=3000, ge=1)
    videos_per_batch: int = Field(default=4, ge=1)
    frames_per_video: int = Field(default=4, ge=1)
    lr: float = Field(default=1e-4, gt=0)
    grad_clip: float = Field(default=1.0, gt=0)
    ema_decay: float = Field(default=0.9999, ge=0, lt=1)
    w_simple: float = Field(default=1.0, ge=0)
    w_reg: float = Field(default=1.0, ge=0)
    seed: int = 0
    checkpoint_every: int = Field(default=500, ge=1)
    log_every: int = Field(default=50, ge=1)
    device: str = "auto"
    mixed_precision: bool = True


class InferenceSettings(_Section):
    """How the UNet runs at inference: precision, memory layout, compilation (all measured in benchmarks/)."""

    precision: Literal["float32", "bfloat16", "float16"] = "float32"
    channels_last: bool = False
    compile: bool = False


# The most BDIA's inversion may multiply float round-off by (gamma ** -(steps - 1)): at 1e4 the demo model
# still reconstructs at 62.6 dB in float32 (S=50, gamma 0.83; benchmarks/sampler_bench.py).
BDIA_MAX_AMPLIFICATION = 1e4
# Damps the mode changed codes excite to under 1% of the change by S = 10 (tests/test_diffusion.py).
BDIA_DEFAULT_GAMMA = 0.5


class InvertParams(InferenceSettings):
    """Inversion of every frame, once per video; its sampler and steps are also every edit's decoding."""

    # ddim: the paper's sampler, approximate inversion; bdia: BDIA-DDIM, exact inversion (pipeline/model/diffusion.py).
    sampler: Literal["ddim", "bdia"] = "ddim"
    steps: int = Field(default=50, ge=1, le=1000)
    # BDIA's weight of the backward half-step. 1 is time-symmetric (leapfrog) and leaves an undamped
    # alternating mode that changed codes excite (speckled edits); below 1 decoding damps it by gamma per
    # step while the inversion divides by gamma, multiplying round-off by gamma ** -(steps - 1).
    # None: 0.5, or the lowest gamma the round-off allows at this many steps if that is higher.
    bdia_gamma: float | None = Field(default=None, gt=0, le=1)
    batch_size: int = Field(default=32, ge=1)
    device: str = "auto"

    @property
    def effective_bdia_gamma(self) -> float:
        """The gamma BDIA runs with: `bdia_gamma`, or when unset 0.5 or the lowest the round-off bound allows."""
        if self.bdia_gamma is not None:
            return self.bdia_gamma
        return max(BDIA_DEFAULT_GAMMA, self._lowest_bdia_gamma())

    def _lowest_bdia_gamma(self) -> float:
        return math.ceil(BDIA_MAX_AMPLIFICATION ** (-1 / max(self.steps - 1, 1)) * 100) / 100

    @model_validator(mode="after")
    def _bdia_settings(self) -> "InvertParams":
        if self.sampler == "bdia" and self.steps < 2:
            raise ValueError("invert.sampler bdia needs invert.steps >= 2 (its state is two latents)")
        gamma = self.effective_bdia_gamma
        if self.sampler == "bdia" and gamma ** (1 - self.steps) > BDIA_MAX_AMPLIFICATION:
            raise ValueError(f"invert.bdia_gamma {gamma:g} with invert.steps {self.steps}: the inversion would "
                             f"multiply round-off by {gamma ** (1 - self.steps):.1e}; use bdia_gamma >= "
                             f"{self._lowest_bdia_gamma():g} or fewer steps")
        return self


class FitClassifiersParams(_Section):
    """Attribute classifiers in identity space, fitted on a labelled face table."""

    labels: str | None = None  # CelebA list_attr_celeba.txt, .csv or .parquet; None: stage not configured
    images: str | None = None  # folder that relative image paths are resolved against (None: the table's)
    holdout_fraction: float = Field(default=0.2, gt=0, lt=1)
    seed: int = 0
    epochs: int = Field(default=300, ge=1)
    max_images: int | None = Field(default=None, ge=1)


class ClassifierEdit(_Section):
    """Move the identity along fitted attribute directions (`fit_classifiers` output)."""

    kind: Literal["classifier"]
    classifier: DataPath = "data/classifiers/classifier.safetensors"
    attributes: dict[str, float]


class TextEdit(_Section):
    """CLIP-guided edit from a text prompt; needs local open_clip weights.

    Defaults are the reference implementation's (CLIP ViT-B/16; w_clip 3, where the paper says 5). The
    direction is optimised through a short DDIM trajectory of ``num_steps`` steps from ``t_start`` to 0.
    """

    kind: Literal["text"]
    target_text: str
    source_text: str = "face"
    clip_model: str = "ViT-B-16"
    clip_weights: WeightsPath | None = None
    iterations: int = Field(default=2000, ge=1)
    lr: float = Field(default=0.002, gt=0)
    w_clip: float = Field(default=3.0, ge=0)
    w_id: float = Field(default=1.0, ge=0)
    w_l1: float = Field(default=5.0, ge=0)
    scale: float = 0.5
    num_steps: int = Field(default=5, ge=1)
    t_start: int = Field(default=800, ge=1, le=999)

    @model_validator(mode="after")
    def _texts_differ(self) -> "TextEdit":
        if not self.target_text.strip():
            raise ValueError("target_text must not be empty")
        if self.target_text.strip() == self.source_text.strip():
            raise ValueError("target_text must differ from source_text (their difference is the edit)")
        return self


class ReferenceEdit(_Section):
    """Move the identity toward a reference face (image or video), or away from the video's own (anonymise)."""

    kind: Literal["reference"]
    reference: DataPath | None = None
    away: bool = False
    strength: float = Field(default=0.5, ge=0)
    seed: int = 0

    @model_validator(mode="after")
    def _reference_or_away(self) -> "ReferenceEdit":
        if not self.away and not self.reference:
            raise ValueError("a reference edit needs `reference` (an image or video) unless `away: true`")
        return self


class MotionEdit(_Section):
    """Decode the video with the motion codes of a driving video (pipeline/editing/motion.py).

    `driver` is a video id under `drivers:` or `videos:`, or a video file (under data/ in a params file).
    Its frames are matched to the video's by time; past the driver's end it holds its last frame or loops.
    """

    kind: Literal["motion"]
    driver: str = Field(min_length=1)
    mode: Literal["relative", "absolute"] = "relative"
    shorter: Literal["hold", "loop"] = "hold"


ExpressionCurve = float | list[tuple[float, float]]


class ExpressionEdit(_Section):
    """Named, signed expression offsets on the motion codes (pipeline/editing/motion.py documents each).

    A strength is a fraction of the expression's typical range (1: full, negative: the opposite),
    either constant or keyframes `[[seconds, strength], ...]` interpolated linearly in time.
    """

    kind: Literal["expression"]
    expressions: dict[str, ExpressionCurve] = Field(min_length=1)

    @field_validator("expressions")
    @classmethod
    def _known_and_ordered(cls, value: dict[str, ExpressionCurve]) -> dict[str, ExpressionCurve]:
        from pipeline.editing.motion import EXPRESSIONS

        for name, curve in value.items():
            if name not in EXPRESSIONS:
                raise ValueError(f"unknown expression {name!r} (known: {', '.join(EXPRESSIONS)})")
            if isinstance(curve, list):
                times = [time for time, _ in curve]
                if not times or any(later <= earlier for earlier, later in zip(times, times[1:])):
                    raise ValueError(f"{name}: keyframe times must be given and strictly increasing")
        return value


EditSpec = Annotated[
    ClassifierEdit | TextEdit | ReferenceEdit | MotionEdit | ExpressionEdit, Field(discriminator="kind")
]


class EditParams(InferenceSettings):
    """Shared settings of the edit stage."""

    batch_size: int = Field(default=32, ge=1)
    device: str = "auto"
    region_threshold: float = Field(default=0.08, gt=0, le=1)
    region_dilation: float = Field(default=0.12, ge=0, le=0.5)
    feather: float = Field(default=0.03, ge=0, le=0.5)


class RenderParams(_Section):
    """Video encoding of the rendered outputs."""

    crf: int = Field(default=18, ge=0, le=51)
    preset: str = "medium"
    contact_sheet_columns: int = Field(default=8, ge=1, le=64)


class Params(_Section):
    """The whole `params.yaml`."""

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

    @field_validator("videos", "drivers")
    @classmethod
    def _video_ids(cls, value: dict[str, VideoParams]) -> dict[str, VideoParams]:
        for video_id in value:
            if not VIDEO_ID_PATTERN.match(video_id):
                raise ValueError(
                    f"video id {video_id!r} must be a plain name (letters, digits, '_', '-', '.'), "
                    "not a path"
                )
        return value

    @field_validator("edits")
    @classmethod
    def _edit_names(cls, value: dict) -> dict:
        for name in value:
            if not VIDEO_ID_PATTERN.match(name):
                raise ValueError(f"edit name {name!r} must be a plain name (letters, digits, '_', '-', '.')")
        return value

    @field_validator("fit_classifiers")
    @classmethod
    def _label_paths_inside_data(cls, value: "FitClassifiersParams") -> "FitClassifiersParams":
        # Checked here, not on the section: `dva fit-classifiers --labels` may name any file.
        for name in ("labels", "images"):
            if getattr(value, name) is not None:
                try:
                    safe_relative_path(getattr(value, name))
                except ValueError as exc:
                    raise ValueError(f"{name}: {exc}") from None
        return value

    @model_validator(mode="after")
    def _motion_drivers_known(self) -> "Params":
        for name, spec in self.edits.items():
            if isinstance(spec, MotionEdit) and spec.driver not in self.drivers and spec.driver not in self.videos:
                try:
                    safe_relative_path(spec.driver)
                except ValueError as exc:
                    raise ValueError(f"edits.{name}.driver: not a video id under drivers/videos, and {exc}") from None
        return self

    @model_validator(mode="after")
    def _train_videos_known(self) -> "Params":
        for video_id in self.train.videos or []:
            if video_id not in self.videos:
                raise ValueError(f"train.videos names unknown video {video_id!r}")
        return self

    @property
    def train_videos(self) -> list[str]:
        """Videos the autoencoder trains on (all listed videos unless `train.videos` says otherwise)."""
        return list(self.train.videos or self.videos)


def _format_error(error: dict) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    return f"{key}: {message}"


def parse_params(raw: object, source: str = "params.yaml") -> Params:
    """Validate an already-loaded params mapping; errors name the offending key."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping at the top level")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ParamsError(f"{source}: {_format_error(first)}") from None


def override_params(params: Params, section: str, option: str, **values: object) -> Params:
    """`params` with `values` set in `section`, validated as the file is (a CLI option's override).

    An invalid combination is a ParamsError naming the option, e.g. ``--steps 1`` with the bdia sampler.
    """
    updated = params.model_dump() | {section: getattr(params, section).model_dump() | values}
    try:
        return Params.model_validate(updated)
    except ValidationError as exc:
        shown = " ".join(f"{option} {value}" for value in values.values())
        raise ParamsError(f"{shown}: {_format_error(exc.errors()[0])}") from None


def load_params(path: Path) -> Params:
    """Read and validate `params.yaml`."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return parse_params(raw, str(path))
