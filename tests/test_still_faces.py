"""Reference identities from a face image or a face video, aligned and encoded like the videos."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.core.errors import InputError
from tests.conftest import CROP_SIZE


@pytest.fixture(scope="module")
def backends():
    from pipeline.faces.face_detection import DlibLandmarkDetector
    from pipeline.faces.identity import DlibIdentityEncoder

    return DlibLandmarkDetector(), DlibIdentityEncoder()


def test_reference_video_and_image_match_the_clip_identity(backends, sample_clip, sample_run, tmp_path):
    from pipeline.faces.still_faces import reference_identity
    from pipeline.runs.artifacts import read_features
    from pipeline.video.video_io import iter_frames

    detector, encoder = backends
    video_identity = read_features(sample_run.encode).video_identity
    from_video = reference_identity(sample_clip, detector, encoder, CROP_SIZE, max_frames=4)
    frame = next(f.rgb for f in iter_frames(sample_clip) if f.index == 40)
    image = tmp_path / "face.png"
    cv2.imwrite(str(image), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    from_image = reference_identity(image, detector, encoder, CROP_SIZE)
    for code in (from_video, from_image):
        assert code.shape == video_identity.shape
        assert np.isclose(np.linalg.norm(code), 1, atol=1e-5)
        # Same person as the clip: dlib codes of one person sit far above other people's (~0.9 vs <0.6).
        assert float(code @ video_identity) > 0.9


def test_reference_without_a_face_is_a_clear_error(backends, tmp_path):
    from pipeline.faces.still_faces import reference_identity

    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((120, 120, 3), 128, np.uint8))
    with pytest.raises(InputError, match="no face"):
        reference_identity(blank, *backends, CROP_SIZE)
