"""`params.yaml` validation: a mistake must stop the run with a message naming the key, before any
stage spends minutes on the wrong settings, and video entries must not reach outside data/."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.errors import ParamsError
from pipeline.params import Params, load_params, parse_params

from .conftest import REPO_ROOT


def test_defaults_are_valid():
    params = parse_params({})
    assert params == Params()
    assert params.videos == {}
    assert params.model.crop_size == 64  # tiny preset
    assert parse_params({"model": {"preset": "paper"}}).model.crop_size == 256
    assert parse_params({"model": {"resolution": 128}}).model.crop_size == 128


def test_repository_params_yaml_validates():
    params = load_params(REPO_ROOT / "params.yaml")
    assert "carphone" in params.videos
    assert params.videos["carphone"].path.startswith("data/")
    assert params.train_videos  # defaults to every listed video


def test_unknown_key_is_rejected_by_name():
    with pytest.raises(ParamsError, match=r"align\.bogus: unknown key"):
        parse_params({"align": {"bogus": 1}})
    with pytest.raises(ParamsError, match=r"aling: unknown key"):  # a misspelt section
        parse_params({"aling": {"max_gap": 3}})


def test_wrong_type_names_the_key():
    with pytest.raises(ParamsError, match=r"align\.max_gap"):
        parse_params({"align": {"max_gap": "five"}})
    with pytest.raises(ParamsError, match=r"align\.backend"):
        parse_params({"align": {"backend": "mediapipe"}})
    with pytest.raises(ParamsError, match=r"align\.mask_feather"):
        parse_params({"align": {"mask_feather": 3.0}})  # out of range
    with pytest.raises(ParamsError, match=r"model\.resolution"):
        parse_params({"model": {"resolution": 48}})  # not a power of two


@pytest.mark.parametrize("key", ["smooth_center_sigma", "detection_threshold"])
@pytest.mark.parametrize("value", [".inf", ".nan", "-.inf"])
def test_non_finite_numbers_are_rejected(key, value, tmp_path):
    # YAML spells them .inf/.nan; an infinite sigma crashed the smoother and a NaN threshold
    # silently detected nothing.
    path = tmp_path / "params.yaml"
    path.write_text(f"align:\n  {key}: {value}\n")
    with pytest.raises(ParamsError, match=rf"align\.{key}"):
        load_params(path)


@pytest.mark.parametrize("video_id", ["../x", "/abs", "a/b", ".hidden", ""])
def test_video_ids_that_are_paths_are_rejected(video_id):
    # Ids become folder names under data/extract/ etc.; a path-like id would write elsewhere.
    with pytest.raises(ParamsError, match="video id"):
        parse_params({"videos": {video_id: {"path": "data/raw/x.mp4"}}})


@pytest.mark.parametrize("path", ["data/../x.mp4", "../data/x.mp4", "/etc/passwd", "raw/x.mp4", "data/raw/../../x"])
def test_video_paths_outside_data_are_rejected(path):
    with pytest.raises(ParamsError, match=r"videos\.clip\.path"):
        parse_params({"videos": {"clip": {"path": path}}})


def test_video_path_is_normalised():
    assert parse_params({"videos": {"clip": {"path": "data/./raw//x.mp4"}}}).videos["clip"].path == "data/raw/x.mp4"


def test_train_videos_must_name_listed_videos():
    videos = {"a": {"path": "data/raw/a.mp4"}, "b": {"path": "data/raw/b.mp4"}}
    assert parse_params({"videos": videos, "train": {"videos": ["b"]}}).train_videos == ["b"]
    assert parse_params({"videos": videos}).train_videos == ["a", "b"]
    with pytest.raises(ParamsError, match=r"train\.videos.*'c'"):
        parse_params({"videos": videos, "train": {"videos": ["b", "c"]}})


def test_load_params_reports_file_problems_as_params_errors(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("align: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ParamsError, match="mapping"):
        load_params(listing)


def test_empty_params_file_is_rejected_not_crashing(tmp_path):
    # An empty file loads as None; it must be a clear ParamsError, not an AttributeError.
    empty = tmp_path / "params.yaml"
    empty.write_text("")
    with pytest.raises(ParamsError):
        load_params(empty)


# ----------------------------------------------------------------------------------------------
# Fuzz: any value for a known key either validates or is a ParamsError naming that key.

FUZZED_KEYS = [
    ("align", "max_gap"),
    ("align", "mask_feather"),
    ("align", "backend"),
    ("align", "smooth_vector_sigma"),
    ("extract", "max_frames"),
    ("model", "resolution"),
    ("train", "lr"),
    ("train", "videos"),
    ("align", "fan_weights"),
    ("encode", "arcface_weights"),
    ("invert", "precision"),
    ("invert", "channels_last"),
    ("edit", "compile"),
    ("render", "crf"),
]

yaml_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6,
)


@settings(max_examples=150, deadline=None)
@given(key=st.sampled_from(FUZZED_KEYS), value=yaml_values)
def test_fuzzed_values_validate_or_name_the_key(key, value):
    section, name = key
    raw = {"videos": {"clip": {"path": "data/raw/clip.mp4"}}, section: {name: value}}
    try:
        params = parse_params(raw)
    except ParamsError as exc:
        assert f"{section}.{name}" in str(exc)
        assert "\n" not in str(exc)  # printed as one CLI line
        return
    # Accepted values keep the declared meaning (a number where a number is expected, etc.).
    stored = getattr(getattr(params, section), name)
    if (section, name) == ("model", "resolution") and stored is not None:
        assert stored >= 16 and stored & (stored - 1) == 0
    if name.endswith("_weights") and stored is not None:
        assert stored.split("/")[0] in ("models", "data") and ".." not in stored.split("/")
    if (section, name) == ("train", "lr"):
        assert isinstance(stored, float) and 0 < stored < float("inf")
    # A validated config survives a YAML round trip unchanged (what `dvc params diff` compares).
    assert parse_params(yaml.safe_load(yaml.safe_dump(params.model_dump(mode="json")))) == params


def test_a_missing_params_file_is_an_error_naming_it(tmp_path, capsys):
    from stages.cli import main

    missing = tmp_path / "params-typo.yaml"
    with pytest.raises(SystemExit) as done:
        main(["extract", str(tmp_path / "in.mp4"), str(tmp_path / "out"), "--params", str(missing), "--quiet"])
    assert done.value.code == 1
    assert capsys.readouterr().err.strip() == f"error: {missing}: params file not found"


@pytest.mark.parametrize("stage", ["invert", "train"])
def test_a_command_line_override_is_validated_like_the_file(stage, tmp_path, capsys):
    from stages.cli import main

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"invert": {"sampler": "bdia"}}))
    paths = [str(tmp_path / name) for name in ("model.safetensors", "align", "encode", "out")]
    arguments = paths if stage == "invert" else paths[-1:]
    steps = "1" if stage == "invert" else "0"
    with pytest.raises(SystemExit) as done:
        main([stage, *arguments, "--steps", steps, "--params", str(params), "--quiet"])
    assert done.value.code == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"error: --steps {steps}: {stage}") and "\n" not in error, error
    assert not (tmp_path / "out").exists()


def test_a_bdia_gamma_that_would_blow_up_round_off_is_refused_with_the_lowest_usable_one():
    # 0.5 ** -49 = 5.6e14: the inversion would multiply float round-off past any use.
    with pytest.raises(ParamsError) as error:
        parse_params({"invert": {"sampler": "bdia", "steps": 50, "bdia_gamma": 0.5}})
    message = str(error.value)
    assert message.startswith("params.yaml: invert: bdia_gamma 0.5 with 50 steps") and "use bdia_gamma >= 0.83" in message
    # The lowest gamma it names passes; the demo's S = 10 takes 0.5 (round-off x 512).
    parse_params({"invert": {"sampler": "bdia", "steps": 50, "bdia_gamma": 0.83}})
    parse_params({"invert": {"sampler": "bdia", "steps": 10, "bdia_gamma": 0.5}})
    # DDIM has no gamma: the same numbers are fine.
    parse_params({"invert": {"sampler": "ddim", "steps": 50, "bdia_gamma": 0.5}})
    # Unset, gamma is 0.5 where the round-off allows it and the lowest usable value where not.
    assert parse_params({"invert": {"sampler": "bdia", "steps": 10}}).invert.sampler_config["bdia_gamma"] == 0.5
    assert parse_params({"invert": {"sampler": "bdia", "steps": 50}}).invert.sampler_config["bdia_gamma"] == 0.83


def test_an_unset_bdia_gamma_follows_a_command_line_steps_override():
    from pipeline.core.config import override_params

    params = parse_params({"invert": {"sampler": "bdia", "steps": 10}})
    assert override_params(params, "invert", "--steps", steps=50).invert.sampler_config["bdia_gamma"] == 0.83
    explicit = parse_params({"invert": {"sampler": "bdia", "steps": 10, "bdia_gamma": 0.5}})
    with pytest.raises(ParamsError, match=r"--steps 50: .*use bdia_gamma >= 0.83"):
        override_params(explicit, "invert", "--steps", steps=50)


def test_the_reference_timestep_rule_refuses_a_step_count_no_stride_gives():
    # range(0, 1000, k) has 37 elements for no integer k (k = 27 gives 38, k = 28 gives 36).
    with pytest.raises(ParamsError) as error:
        parse_params({"invert": {"sampler": "ddim", "steps": 37, "timestep_spacing": "stride"}})
    assert "no stride giving 37 steps" in str(error.value) and "nearest usable count is 36" in str(error.value)
    assert parse_params({"invert": {"steps": 36, "timestep_spacing": "stride"}}).invert.sampler_config[
        "timesteps"] == list(range(0, 1000, 28))


# ----------------------------------------------------------------------------------------------
# One-off runs: packaged defaults outside a project, absolute weights paths


PROJECT_SECTIONS = ("videos", "drivers", "edits")  # what a project adds to the defaults


def test_packaged_defaults_equal_the_projects_params_in_every_section():
    from pipeline.params import packaged_defaults_file

    project = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    packaged = yaml.safe_load(packaged_defaults_file().read_text())
    assert not set(PROJECT_SECTIONS) & set(packaged)
    assert {key: value for key, value in project.items() if key not in PROJECT_SECTIONS} == packaged
    # And validated, the two agree on every section's value (train.videos: null names none of them).
    whole, defaults = load_params(REPO_ROOT / "params.yaml"), load_params(packaged_defaults_file())
    for section in Params.model_fields:
        if section not in PROJECT_SECTIONS:
            assert getattr(whole, section) == getattr(defaults, section), section


def test_one_off_run_outside_a_project_uses_the_packaged_defaults_and_says_so(tmp_path, monkeypatch, capsys):
    from pipeline.params import packaged_defaults_file
    from workflows.one_off import one_off_params

    monkeypatch.chdir(tmp_path)
    assert one_off_params(None) == load_params(packaged_defaults_file())
    assert capsys.readouterr().err.strip() == "no params.yaml here: using the packaged defaults"
    (tmp_path / "params.yaml").write_text("invert: {steps: 3}\n")
    assert one_off_params(None).invert.steps == 3
    assert capsys.readouterr().err == ""
    with pytest.raises(ParamsError, match="elsewhere.yaml: params file not found"):
        one_off_params(tmp_path / "elsewhere.yaml")


def test_dva_edit_with_a_missing_explicit_params_file_is_one_error_line(tmp_path, dva_executable):
    import subprocess

    result = subprocess.run([dva_executable, "edit", str(tmp_path / "v.mp4"), "--checkpoint", str(tmp_path / "m"),
                             "--edit", "x", "--out", str(tmp_path / "o.mp4"), "--params", str(tmp_path / "p.yaml")],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode != 0
    assert result.stderr.strip() == f"error: {tmp_path / 'p.yaml'}: params file not found"


@pytest.mark.parametrize("section, key", [("encode", "arcface_weights"), ("align", "fan_weights")])
def test_absolute_weights_paths_only_in_one_off_runs(section, key):
    from pipeline.core.config import ONE_OFF

    raw = {section: {key: "/downloads/weights.bin"}}
    with pytest.raises(ParamsError, match=f"{section}.{key}: path '/downloads/weights.bin' must be relative"):
        parse_params(raw)
    assert getattr(getattr(parse_params(raw, context=ONE_OFF), section), key) == "/downloads/weights.bin"
    # Escaping the project by a relative path stays an error everywhere.
    with pytest.raises(ParamsError, match="must be relative"):
        parse_params({section: {key: "models/../../weights.bin"}}, context=ONE_OFF)
