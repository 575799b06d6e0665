"""The paper's pipeline end to end: an imported checkpoint, the README's params snippet, `dva edit`.

With `conventions: auto` an imported model runs the reference's conventions: the identity code, the
timesteps, the masks and the paste-back that the edit used must be the reference's
(`pipeline/core/conventions.py`), and the crop size follows the checkpoint.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import yaml

from pipeline.core.tables import read_table
from pipeline.editing.editing import AttributeClassifier, l2norm
from pipeline.runs.artifacts import ALPHA_FILE, EDIT_INFO_FILE, EDITED_FILE, INVERT_TABLE_FILE, read_features
from stages.cli import main
from tests.conftest import REPO_ROOT
from tests.reference_fixture import formula_state, write_lightning_checkpoint
from tests.test_reference_model import _config_file

FRAMES = 6  # the sample's first face is in frame 3
# An explicit S keeps the test fast (the reference's own is 1000); 30 is one where the reference's stride rule
# (range(0, 1000, 34)) and i * 1000 // 30 differ, so the grid the inversion records tells them apart.
STEPS = 30


def readme_params() -> dict:
    """The params block the README gives for an imported model (after its `reference-params` marker)."""
    text = (REPO_ROOT / "README.md").read_text()
    block = re.search(r"<!-- reference-params[^>]*-->\s*```yaml\n(.*?)```", text, re.S)
    assert block, "README.md lost its reference-params block"
    return yaml.safe_load(block.group(1))


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, sample_clip):
    root = tmp_path_factory.mktemp("reference-run")
    source = write_lightning_checkpoint(root / "epoch=51-step=1000000.ckpt", formula_state("small64"))
    checkpoint = root / "models" / "dva_paper.safetensors"
    checkpoint.parent.mkdir()
    with pytest.raises(SystemExit) as done:
        main(["import-reference", str(source), str(checkpoint), "--config", str(_config_file(root)), "--quiet"])
    assert done.value.code == 0
    params = readme_params()
    (name, spec), = params["edits"].items()
    rng = np.random.default_rng(0)
    classifier = AttributeClassifier(attributes=list(spec["attributes"]), weights=rng.standard_normal((1, 512)),
                                     bias=np.zeros(1), mean=rng.standard_normal(512) * 0.01,
                                     std=np.full(512, 0.05))
    (root / spec["classifier"]).parent.mkdir(parents=True)
    classifier.save(root / spec["classifier"])
    params |= {"extract": {"max_frames": FRAMES}, "invert": {"steps": STEPS}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root, name, spec, classifier


def _run_edit(root, monkeypatch, sample_clip, name: str) -> None:
    monkeypatch.chdir(root)
    with pytest.raises(SystemExit) as done:
        main(["edit", str(sample_clip), "--checkpoint", "models/dva_paper.safetensors", "--edit", name,
              "--out", "out/edited.mp4", "--work", "work", "--quiet"])
    assert done.value.code == 0


def test_an_imported_model_edits_as_the_reference_does(reference_run, monkeypatch, sample_clip):
    root, name, spec, classifier = reference_run
    _run_edit(root, monkeypatch, sample_clip, name)
    work = root / "work"
    (align,), (encode,), (invert,), (edit,) = (sorted((work / stage).iterdir()) for stage in
                                               ("align", "encode", "invert", "edit"))
    # The crop size came from the checkpoint (64 px), not from `model.preset: paper` (256).
    assert np.load(align / "crops.npy").shape[1:3] == (64, 64)
    lineage = json.loads((align / "lineage.json").read_text())["params"]["align"]
    assert (lineage["smooth_edges"], lineage["outside"], lineage["mask_feather"]) == ("reflect", "black", 0.0)

    # Timesteps: DDIM over the reference's stride grid; the explicit S won over the profile's 1000.
    _, meta = read_table(invert / INVERT_TABLE_FILE)
    assert (meta["sampler"], meta["timestep_spacing"]) == ("ddim", "stride")
    assert meta["timesteps"] == list(range(0, 1000, 34))

    # Identity code: avg_cond, the raw mean over the face frames, not re-normalised.
    features = read_features(encode)
    faces = np.array([state != "no_face" for state in features.status])
    raw_mean = features.identities[faces].mean(axis=0)
    np.testing.assert_allclose(meta["video_identity"], raw_mean, rtol=0, atol=1e-6)
    # (The formula IR-SE50 gives every frame nearly one code, so the rule is read from the record too;
    # tests/test_invert.py shows the two rules apart on codes that differ.)
    assert meta["video_identity_rule"] == "raw_mean"

    # The classifier edit applied to that raw mean, by the reference's formula.
    info = json.loads((edit / EDIT_INFO_FILE).read_text())
    (attribute, scale), = spec["attributes"].items()
    w = classifier.weights[0].astype(np.float64)
    # editing_classifier.py --normalize: l2norm(denorm(norm(avg_cond) + scale * sqrt(512) * w / |w|)).
    moved = (raw_mean - classifier.mean) / classifier.std + scale * math.sqrt(512) * w / np.linalg.norm(w)
    expected = l2norm(moved * classifier.std + classifier.mean)
    np.testing.assert_allclose(info["edited_identity"], expected, rtol=0, atol=1e-5)

    # Masks: hard; inside the crop the edit replaces the source only under the mask; the whole crop is
    # pasted back (its blend mask is 1 everywhere).
    masks = np.load(align / "masks.npy")[faces]
    assert set(np.unique(masks)) <= {0, 255}
    alpha = np.load(edit / ALPHA_FILE)[faces]
    assert (alpha == 255).all()
    edited, source = np.load(edit / EDITED_FILE)[faces], np.load(align / "crops.npy")[faces]
    outside = masks == 0
    assert (edited[outside] == source[outside]).all()


@pytest.mark.slow  # a second full run through the reference's face networks
def test_project_conventions_on_an_imported_model_are_the_projects(reference_run, monkeypatch, sample_clip):
    root, name, _, _ = reference_run
    params = yaml.safe_load((root / "params.yaml").read_text()) | {"conventions": "project"}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    _run_edit(root, monkeypatch, sample_clip, name)
    invert = [folder for folder in (root / "work" / "invert").iterdir()
              if read_table(folder / INVERT_TABLE_FILE)[1]["video_identity_rule"] == "normalised_mean"]
    assert len(invert) == 1
    _, meta = read_table(invert[0] / INVERT_TABLE_FILE)
    assert meta["timesteps"] == [i * 1000 // STEPS for i in range(STEPS)]
