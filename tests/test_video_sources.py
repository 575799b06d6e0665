"""Which videos a batch runs: a folder's video files, or a manifest's entries, which cannot point
outside the manifest's folder; ids are unique and safe as folder names."""

from __future__ import annotations

import pytest

from pipeline.core.errors import InputError
from pipeline.video.video_sources import discover_videos


def test_folder_lists_video_files_sorted_with_unique_safe_ids(tmp_path):
    for name in ("b.mp4", "a clip.MOV", "a clip.mkv", "notes.txt", ".hidden.mp4"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    sources = discover_videos(tmp_path)
    assert [(source.video_id, source.path.split("/")[-1]) for source in sources] == [
        ("a_clip", "a clip.MOV"), ("a_clip-2", "a clip.mkv"), ("b", "b.mp4")
    ]


@pytest.mark.parametrize("name, text", [
    ("list.txt", "# clips\nclips/one.mp4\n\nclips/two.mp4\n"),
    ("list.csv", "path,id\nclips/one.mp4,first\nclips/two.mp4,\n"),
    ("list.yaml", "first: clips/one.mp4\ntwo: clips/two.mp4\n"),
])
def test_manifests_resolve_relative_to_their_folder(tmp_path, name, text):
    manifest = tmp_path / name
    manifest.write_text(text)
    sources = discover_videos(manifest)
    assert [source.path for source in sources] == [str(tmp_path / "clips/one.mp4"), str(tmp_path / "clips/two.mp4")]
    assert sources[1].video_id == "two"


@pytest.mark.parametrize("entry", ["../outside.mp4", "/etc/passwd", "clips/../../outside.mp4"])
def test_manifest_entries_cannot_leave_its_folder(tmp_path, entry):
    manifest = tmp_path / "list.txt"
    manifest.write_text(f"clips/ok.mp4\n{entry}\n")
    with pytest.raises(InputError, match=r"list\.txt: line 2: path .* must be relative and stay inside"):
        discover_videos(manifest)


@pytest.mark.parametrize("make, problem", [
    (lambda root: root / "missing", "not found"),
    (lambda root: (root / "empty").mkdir() or root / "empty", "no videos found"),
    (lambda root: (root / "x.json").write_text("{}") and root / "x.json", "not a folder of videos or a manifest"),
])
def test_unusable_locations_are_one_line_errors(tmp_path, make, problem):
    with pytest.raises(InputError, match=problem):
        discover_videos(make(tmp_path))
