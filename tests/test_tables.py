"""Artifact contracts of extract, align and encode on the real (trimmed) sample clip.

Later stages, other tools (pandas, DuckDB) and audits read these files by column name, type and
metadata key, so their schema is part of the interface.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.hashing import sha256_file
from pipeline.core.tables import METADATA_KEY
from pipeline.faces.alignment import apply_transform, landmark_feature

from .conftest import CROP_SIZE, SAMPLE_FRAMES

HEX64 = re.compile(r"^[0-9a-f]{64}$")
STATUSES = {"ok", "interpolated", "no_face"}


def fixed_list(value_type: pa.DataType, width: int) -> pa.DataType:
    return pa.list_(value_type, width)


def footer_metadata(path) -> dict:
    # Read the footer the way an outside tool would, not through pipeline.core.tables.
    return json.loads(pq.read_schema(path).metadata[METADATA_KEY])


def test_extract_outputs(sample_run):
    table = pq.read_table(sample_run.extract / "frames.parquet")
    assert table.schema.field("index").type == pa.int32()
    assert table.schema.field("pts").type == pa.int64()
    assert table.schema.field("time").type == pa.float64()
    assert table.column("index").to_pylist() == list(range(SAMPLE_FRAMES))
    # 29.97 fps source: times strictly increase by ~1/29.97 s.
    steps = np.diff(table.column("time").to_numpy())
    np.testing.assert_allclose(steps, 1001 / 30000, rtol=1e-6)
    meta = json.loads((sample_run.extract / "meta.json").read_text())
    assert (meta["width"], meta["height"], meta["frame_count"]) == (176, 144, SAMPLE_FRAMES)
    assert meta["fps"] == pytest.approx(29.97, abs=0.01)
    assert meta["has_audio"] is False
    assert footer_metadata(sample_run.extract / "frames.parquet")["time_base"] == meta["time_base"]


def test_align_parquet_schema(sample_run):
    path = sample_run.align / "align.parquet"
    schema = pq.read_schema(path)
    expected = {
        "track": pa.int32(),
        "index": pa.int32(),
        "status": pa.string(),
        "score": pa.float32(),
        "landmarks": fixed_list(pa.float32(), 136),
        "crop_landmarks": fixed_list(pa.float32(), 136),
        "transform": fixed_list(pa.float64(), 6),
    }
    assert {field.name: field.type for field in schema} == expected
    metadata = footer_metadata(path)
    assert metadata["backend"] == "dlib"
    assert metadata["crop_size"] == CROP_SIZE
    assert (metadata["frame_width"], metadata["frame_height"]) == (176, 144)
    assert metadata["weights_sha256"] and all(HEX64.match(value) for value in metadata["weights_sha256"].values())


def test_align_rows_are_consistent(sample_run):
    table = pq.read_table(sample_run.align / "align.parquet")
    status = table.column("status").to_pylist()
    assert len(status) == SAMPLE_FRAMES
    assert set(status) <= STATUSES
    valid = np.array([state != "no_face" for state in status])
    # One clearly visible face throughout: nearly every frame must be usable.
    assert valid.sum() >= 20, status
    landmarks = np.array(table.column("landmarks").to_pylist(), dtype=np.float64).reshape(-1, 68, 2)
    crop_landmarks = np.array(table.column("crop_landmarks").to_pylist(), dtype=np.float64).reshape(-1, 68, 2)
    transforms = np.array(table.column("transform").to_pylist()).reshape(-1, 2, 3)
    scores = np.array(table.column("score").to_pylist(), dtype=np.float64)
    ok = np.array([state == "ok" for state in status])
    assert np.isfinite(scores[ok]).all() and np.isnan(scores[~ok]).all()
    for index in np.flatnonzero(valid):
        # The stored transform maps the stored frame landmarks to the stored crop landmarks
        # (float32 storage: ~1e-4 px), which is what render relies on to paste back.
        np.testing.assert_allclose(apply_transform(transforms[index], landmarks[index]), crop_landmarks[index], atol=1e-2)
        # The face is inside the crop.
        assert crop_landmarks[index].min() > -CROP_SIZE * 0.1 and crop_landmarks[index].max() < CROP_SIZE * 1.1
    assert np.isnan(landmarks[~valid]).all() and np.isnan(transforms[~valid]).all()

    crops = np.load(sample_run.align / "crops.npy", mmap_mode="r")
    masks = np.load(sample_run.align / "masks.npy", mmap_mode="r")
    assert crops.shape == (SAMPLE_FRAMES, CROP_SIZE, CROP_SIZE, 3) and crops.dtype == np.uint8
    assert masks.shape == (SAMPLE_FRAMES, CROP_SIZE, CROP_SIZE) and masks.dtype == np.uint8
    first = int(np.flatnonzero(valid)[0])
    assert crops[first].std() > 10  # a real image, not an empty buffer
    # The mask covers the face centre and not the crop corners.
    assert masks[first][CROP_SIZE // 2, CROP_SIZE // 2] > 200
    assert masks[first][0, 0] == 0 and masks[first][-1, -1] == 0


def test_features_parquet_schema(sample_run):
    path = sample_run.encode / "features.parquet"
    schema = pq.read_schema(path)
    metadata = footer_metadata(path)
    dim = metadata["identity_dim"]
    assert dim == 128  # dlib backend
    expected = {
        "track": pa.int32(),
        "index": pa.int32(),
        "status": pa.string(),
        "identity": fixed_list(pa.float32(), dim),
        "landmark_feature": fixed_list(pa.float32(), 102),
    }
    assert {field.name: field.type for field in schema} == expected
    assert metadata["encoder"] == "dlib"
    assert metadata["crop_size"] == CROP_SIZE
    assert metadata["weights_sha256"] and all(HEX64.match(value) for value in metadata["weights_sha256"].values())
    # The recorded hash is that of the weights actually used (audits compare it to a file on disk).
    import face_recognition_models

    recorded = metadata["weights_sha256"]["dlib_face_recognition_resnet"]
    assert recorded == sha256_file(face_recognition_models.face_recognition_model_location())


def test_features_rows(sample_run):
    features = pq.read_table(sample_run.encode / "features.parquet")
    align = pq.read_table(sample_run.align / "align.parquet")
    metadata = footer_metadata(sample_run.encode / "features.parquet")
    status = features.column("status").to_pylist()
    assert status == align.column("status").to_pylist()
    assert set(status) <= STATUSES
    assert sum(state != "no_face" for state in status) >= 20

    identity = np.array(features.column("identity").to_pylist(), dtype=np.float64)
    valid = np.array([state != "no_face" for state in status])
    ok = np.array([state == "ok" for state in status])
    np.testing.assert_allclose(np.linalg.norm(identity[valid], axis=1), 1.0, atol=1e-5)
    video_identity = np.asarray(metadata["video_identity"], dtype=np.float64)
    assert video_identity.shape == (metadata["identity_dim"],)
    assert np.linalg.norm(video_identity) == pytest.approx(1.0, abs=1e-5)
    mean = identity[ok].mean(axis=0)
    np.testing.assert_allclose(video_identity, mean / np.linalg.norm(mean), atol=1e-5)
    # Same person in every frame: per-frame codes agree closely with the video code.
    assert (identity[ok] @ video_identity).min() > 0.9

    crop_landmarks = np.array(align.column("crop_landmarks").to_pylist(), dtype=np.float64).reshape(-1, 68, 2)
    stored = np.array(features.column("landmark_feature").to_pylist(), dtype=np.float32)
    for index in np.flatnonzero(valid):
        np.testing.assert_allclose(stored[index], landmark_feature(crop_landmarks[index], CROP_SIZE), atol=1e-6)
    assert stored[valid].min() > 0 and stored[valid].max() < 1


def test_extract_stores_a_byte_copy_read_back_the_same_every_time(sample_extract, sample_clip):
    from pipeline.runs.artifacts import FRAME_TABLE_FILE, FRAMES_FILE
    from pipeline.video.video_io import frame_table_path, iter_frames, read_lossless_frames

    # The readers find the table from the frames file's name.
    assert frame_table_path(sample_extract / FRAMES_FILE) == sample_extract / FRAME_TABLE_FILE
    assert sha256_file(sample_extract / FRAMES_FILE) == sha256_file(sample_clip)
    store = footer_metadata(sample_extract / FRAME_TABLE_FILE)["frame_store"]
    assert store["sha256"] == sha256_file(sample_clip) and store["demuxer"].startswith("mov")
    first = list(read_lossless_frames(sample_extract / FRAMES_FILE))
    second = list(read_lossless_frames(sample_extract / FRAMES_FILE, start=3, stop=7))
    source = [frame.rgb for frame in iter_frames(sample_clip, max_frames=SAMPLE_FRAMES)]
    assert len(first) == len(source) == SAMPLE_FRAMES and len(second) == 4
    for index, (stored, decoded) in enumerate(zip(first, source)):
        np.testing.assert_array_equal(stored, decoded)
        if 3 <= index < 7:
            np.testing.assert_array_equal(second[index - 3], stored)


def test_stored_frames_refuse_a_changed_copy_or_another_ffmpeg(sample_extract, tmp_path, monkeypatch):
    import shutil

    from pipeline.core.errors import InputError
    from pipeline.runs.artifacts import FRAMES_FILE
    from pipeline.video import video_io

    copy = tmp_path / "extract"
    shutil.copytree(sample_extract, copy)
    with pytest.raises(InputError, match="another|stored under"):
        monkeypatch.setattr(video_io, "decoder_versions", lambda: "PyAV 0.0, libavcodec 0.0.0")
        next(video_io.read_lossless_frames(copy / FRAMES_FILE))
    monkeypatch.undo()
    data = bytearray((copy / FRAMES_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / FRAMES_FILE).write_bytes(bytes(data))
    with pytest.raises(InputError, match="changed since it was extracted"):
        next(video_io.read_lossless_frames(copy / FRAMES_FILE))
