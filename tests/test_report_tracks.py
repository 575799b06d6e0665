"""The review page with several faces: a table of per-track figures, and per-frame plots over every face."""

from __future__ import annotations

import pandas as pd

from pipeline.report.site import frame_plots, metrics_tables, track_table


def _track(track_id: int, frames: int, reid: float, edited: bool = True) -> dict:
    figures = {"tl_id": 0.98, "tg_id": 0.97, "id_sim_source": 0.5, "reid_rate": reid}
    return {"track": track_id, "frames": frames, "edited": edited, "edit": figures, "reconstruction": figures}


def test_each_track_gets_a_row_with_its_figures():
    html = track_table([_track(0, 48, 0.25), _track(3, 12, 0.75, edited=False)])
    assert html.count("<tr>") == 3  # heading and one row per track
    assert "<th>3</th><td>12</td><td>no</td>" in html
    assert "<td>0.2500</td>" in html and "<td>0.7500</td>" in html
    assert track_table([_track(0, 48, 0.25)]) == ""  # one face: the identity table already says it all


def test_the_track_list_is_not_dumped_into_the_figure_table():
    metrics = {"edit": {"tl_id": 1.0, "tg_id": 1.0, "id_sim_source": 0.5}, "tracks": [_track(0, 4, 0.0),
                                                                                     _track(1, 4, 1.0)]}
    html = metrics_tables(metrics)
    assert "{'track'" not in html and "re-identification rate" in html


def test_per_frame_plots_average_the_faces_of_each_frame(tmp_path):
    pd.DataFrame({"frame": [0, 1, 0, 1], "track": [0, 0, 1, 1], "edit": [0.2, 0.4, 0.6, 0.8]}).to_csv(
        tmp_path / "identity.csv", index=False)
    [svg] = frame_plots(tmp_path)
    assert "track" not in svg.split("</title>")[-1]  # no series for the track ids
    single = tmp_path / "single"
    single.mkdir()
    pd.DataFrame({"frame": [0, 1], "edit": [0.4, 0.6]}).to_csv(single / "identity.csv", index=False)
    assert frame_plots(single) == [svg]  # the means of frames 0 and 1 are 0.4 and 0.6
