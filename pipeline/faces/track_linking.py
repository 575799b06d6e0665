"""Link every face of every frame into tracks with stable ids (one track per person).

Frame by frame, live tracks are matched to the frame's detections by a minimum-cost assignment
(Hungarian). The cost of a pair is the distance between the detection and the track's predicted
position (constant velocity over its last two detections), in units of the track's box size, plus,
when identity embeddings are given, how far the detection's embedding is from the track's mean.
Pairs further than one box size, or whose box size changed more than twofold, never match. A
detection left unmatched first tries to re-join a track that lost its face for longer than
`max_gap` frames (identity embeddings only: position says nothing after a long absence); otherwise
it starts a new track. Tracks with fewer than `min_length` detections are dropped, and the rest are
numbered 0, 1, ... by first appearance, larger face first among faces appearing together, so ids
do not depend on detection order within a frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.faces.face_detection import FaceDetection
from pipeline.faces.tracking import NO_FACE, OK, FaceTrack, fill_gaps

# A gated-out pair's cost: larger than any admissible cost, so the assignment never prefers it.
_FORBIDDEN = 1e6
# A face moves at most about its own size between frames (the single-face tracker's rule too).
_MAX_JUMP_IN_BOX_SIZES = 1.0
# Box sizes of one person in consecutive frames differ by far less than 2x (zooms, turns).
_MAX_SIZE_RATIO = 2.0


@dataclass
class _Track:
    detections: dict[int, FaceDetection] = field(default_factory=dict)
    embeddings: list[np.ndarray] = field(default_factory=list)

    @property
    def last_frame(self) -> int:
        return max(self.detections)

    def size(self) -> float:
        box = self.detections[self.last_frame].box
        return max(box[2] - box[0], box[3] - box[1], 1.0)

    def predicted_center(self, frame: int) -> np.ndarray:
        frames = sorted(self.detections)
        last = self.detections[frames[-1]].center
        if len(frames) < 2:
            return last
        before = self.detections[frames[-2]].center
        velocity = (last - before) / (frames[-1] - frames[-2])
        return last + velocity * (frame - frames[-1])

    def mean_embedding(self) -> np.ndarray | None:
        if not self.embeddings:
            return None
        mean = np.mean(self.embeddings, axis=0)
        return mean / max(float(np.linalg.norm(mean)), 1e-12)


@dataclass(frozen=True)
class LinkedTrack:
    """One person's track: its id, the frames where it was detected, and the filled-in FaceTrack."""

    track_id: int
    detected_frames: tuple[int, ...]
    face: FaceTrack

    @property
    def mean_area(self) -> float:
        """Mean box area over the detected frames (how `largest` chooses)."""
        return float(np.mean([_area(self.face.landmarks[index]) for index in self.detected_frames]))


def _area(landmarks: np.ndarray) -> float:
    extent = np.nanmax(landmarks, axis=0) - np.nanmin(landmarks, axis=0)
    return float(extent[0] * extent[1])


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


def _pair_cost(track: _Track, face: FaceDetection, embedding: np.ndarray | None, frame: int) -> float:
    size = track.size()
    face_size = max(face.box[2] - face.box[0], face.box[3] - face.box[1], 1.0)
    if max(size, face_size) / min(size, face_size) > _MAX_SIZE_RATIO:
        return _FORBIDDEN
    distance = float(np.linalg.norm(face.center - track.predicted_center(frame))) / size
    if distance > _MAX_JUMP_IN_BOX_SIZES:
        return _FORBIDDEN
    mean = track.mean_embedding()
    if embedding is None or mean is None:
        return distance
    return distance + (1.0 - float(_unit(embedding) @ mean))


def link_tracks(
    per_frame: list[list[FaceDetection]],
    embeddings: list[list[np.ndarray]] | None = None,
    max_gap: int = 5,
    min_length: int = 3,
    rejoin_similarity: float = 0.6,
) -> list[LinkedTrack]:
    """Every face of `per_frame` (detections per frame) as tracks, ids by first appearance.

    `embeddings`, when given, holds one identity vector per detection (same nesting); it breaks
    ties at crossings and re-joins a person whose face was lost for more than `max_gap` frames when
    the cosine similarity to the track's mean is at least `rejoin_similarity` (the identity
    encoder's same-person threshold). Gaps of at most `max_gap` frames are interpolated as in
    `track_face`.
    """
    # Imported here, like scipy.ndimage in alignment: only align links tracks, and the import costs time.
    from scipy.optimize import linear_sum_assignment

    live: list[_Track] = []
    ended: list[_Track] = []
    for frame, detections in enumerate(per_frame):
        vectors = embeddings[frame] if embeddings is not None else [None] * len(detections)
        still_live = []
        for track in live:
            (still_live if frame - track.last_frame <= max_gap + 1 else ended).append(track)
        live = still_live
        unmatched = set(range(len(detections)))
        if live and detections:
            costs = np.array([[_pair_cost(track, face, vector, frame) for face, vector in zip(detections, vectors)]
                              for track in live])
            for row, column in zip(*linear_sum_assignment(costs)):
                if costs[row, column] < _FORBIDDEN:
                    _add(live[row], frame, detections[column], vectors[column])
                    unmatched.discard(column)
        # Larger faces first, so that two new faces in one frame get ids by size.
        for column in sorted(unmatched, key=lambda index: -detections[index].area):
            track = _rejoin(ended, vectors[column], rejoin_similarity)
            if track is None:
                track = _Track()
            else:
                ended.remove(track)
            _add(track, frame, detections[column], vectors[column])
            live.append(track)
    kept = [track for track in live + ended if len(track.detections) >= min_length]
    kept.sort(key=lambda track: (min(track.detections), -track.detections[min(track.detections)].area))
    return [_finish(track_id, track, len(per_frame), max_gap) for track_id, track in enumerate(kept)]


def _add(track: _Track, frame: int, face: FaceDetection, embedding: np.ndarray | None) -> None:
    track.detections[frame] = face
    if embedding is not None:
        track.embeddings.append(_unit(np.asarray(embedding, dtype=np.float64)))


def _rejoin(ended: list[_Track], embedding: np.ndarray | None, threshold: float) -> _Track | None:
    if embedding is None:
        return None
    scored = [(float(_unit(embedding) @ mean), track) for track in ended if (mean := track.mean_embedding()) is not None]
    scored = [(similarity, track) for similarity, track in scored if similarity >= threshold]
    return max(scored, key=lambda pair: pair[0])[1] if scored else None


def _finish(track_id: int, track: _Track, count: int, max_gap: int) -> LinkedTrack:
    landmarks = np.full((count, 68, 2), np.nan)
    scores = np.full(count, np.nan)
    status = [NO_FACE] * count
    for frame, face in track.detections.items():
        landmarks[frame], scores[frame], status[frame] = face.landmarks, face.score, OK
    fill_gaps(landmarks, status, max_gap)
    return LinkedTrack(track_id, tuple(sorted(track.detections)), FaceTrack(landmarks, scores, status))
