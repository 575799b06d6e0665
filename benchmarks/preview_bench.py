"""`dva edit --preview` against the full `dva edit` on the bundled sample: wall times, their ratio, reuse.

Run: `python benchmarks/preview_bench.py [--checkpoint data/train/model.safetensors] [--train-steps 20]
[--out benchmarks/results/preview_cpu.json]`.

Settings are the demo's (`params.yaml` minus its videos and edits: the tiny 64 px model, BDIA S=10), on the
whole sample (120 frames). Without `--checkpoint` a model of the demo's architecture is trained for a few
steps first (not timed): the wall times depend on the architecture, not on how well it is trained. Each
run is its own `dva edit` process, as a user would start it, and each ratio compares runs that start from
the same cached state:

- cold (nothing cached): the full edit in a fresh work store, against `--preview` in another fresh store
  (which also extracts, aligns and encodes the whole video: the identity code is the video's mean); then
  the full edit in the preview's store, which must invert only the face frames the preview did not, and
  whose inversion must equal the cold full run's bit for bit;
- warm (extract, align and encode cached, copied from the cold full run's store): the full edit against
  `--preview`, each in its own copy; then, in the preview's store, the same preview again (everything
  cached: what any `dva edit` process costs before it computes anything) and a preview of a second edit
  (the window's inversion reused: one try of a tuning loop).

Each process runs under `--count-inverted`, which counts the frames it inverts (`stages.invert.invert_frames`
wrapped, nothing else changed; besides standard-library modules, this file's module-level imports are ones
`dva edit` makes anyway) for the reuse check. Prints a table and writes JSON with wall and CPU seconds and the
machine's load average before and after each run: other work on the machine slows every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.faces.tracking import NO_FACE  # noqa: E402
from pipeline.params import packaged_defaults_file  # noqa: E402
from pipeline.runs.artifacts import NOISE_FILE, read_features  # noqa: E402

EDIT = {"kind": "expression", "expressions": {"smile": 0.5, "mouth_open": [[0.0, 0.0], [2.0, 0.8], [4.0, 0.0]]}}
SECOND_EDIT = {"kind": "expression", "expressions": {"smile": 1.0}}
PREPARED_STAGES = ("extract", "align", "encode")
COUNT_FLAG = "--count-inverted"


def train_model(root: Path, params: dict, steps: int) -> Path:
    """A model of the params' architecture trained `steps` steps on the sample (the demo's recipe, shortened)."""
    from pipeline.faces.settings import AlignParams, EncodeParams
    from pipeline.params import parse_params
    from stages.align import align_video
    from stages.encode import encode_video
    from stages.extract import extract_video
    from stages.sample import sample_path
    from stages.train import train_autoencoder

    settings = parse_params(params | {"videos": {"sample": {"path": "data/raw/sample.mp4"}},
                                      "train": params["train"] | {"steps": steps, "checkpoint_every": steps}})
    data = root / "data"
    extract_video(sample_path(), data / "extract/sample", progress=False)
    align_video(data / "extract/sample", data / "align/sample", AlignParams(**params["align"]),
                settings.model.crop_size, progress=False)
    encode_video(data / "align/sample", data / "encode/sample", EncodeParams(**params["encode"]), progress=False)
    train_autoencoder(settings, data, root / "train", root / "state.safetensors", progress=False, quiet=True)
    return root / "train" / "model.safetensors"


def counted_dva(count_file: Path, arguments: list[str]) -> None:
    """`dva ARGUMENTS` in this process; writes how many frames it inverted to `count_file` as it exits."""
    import stages.invert
    from stages.cli import main as dva

    original, inverted = stages.invert.invert_frames, []

    def counting(model, sampler, images, *rest, **options):
        inverted.append(len(images))
        return original(model, sampler, images, *rest, **options)

    stages.invert.invert_frames = counting
    try:
        dva(arguments)
    finally:
        count_file.write_text(json.dumps({"inverted_frames": sum(inverted)}))


def children_cpu_seconds() -> float:
    """User + system CPU seconds of this process's finished children (all their threads)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def dva_edit(root: Path, checkpoint: Path, edit: dict, work: Path, out: Path, *options: str) -> dict:
    """Wall and CPU seconds, frames inverted and load averages around one `dva edit` process.

    Other work on the machine changes CPU seconds less than wall seconds: on a shared machine the CPU
    ratio is the steadier figure.
    """
    from stages.sample import sample_path

    count_file = root / "inverted.json"
    count_file.unlink(missing_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), COUNT_FLAG, str(count_file),
               "edit", str(sample_path()), "--checkpoint", str(checkpoint), "--edit", json.dumps(edit),
               "--out", str(out), "--work", str(work), "--params", str(root / "params.yaml"), "--quiet", *options]
    load_before, cpu_before = os.getloadavg()[0], children_cpu_seconds()
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=os.environ | {"OMP_WAIT_POLICY": "PASSIVE"})
    seconds = time.perf_counter() - start
    cpu_seconds = children_cpu_seconds() - cpu_before
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr}")
    inverted = json.loads(count_file.read_text())["inverted_frames"]
    return {"seconds": round(seconds, 2), "cpu_seconds": round(cpu_seconds, 2), "inverted_frames": inverted,
            "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)}


def outputs(stage_folder: Path) -> list[Path]:
    """The finished output folders of one stage of a work store (temporaries start with a dot)."""
    return sorted(path for path in stage_folder.iterdir() if not path.name.startswith("."))


def only_folder(work: Path, stage: str) -> Path:
    """The one output folder of `stage` in a work store that holds one video's outputs."""
    folders = outputs(work / stage)
    if len(folders) != 1:
        raise SystemExit(f"{work / stage}: expected one output folder, found {len(folders)}")
    return folders[0]


def copy_prepared(source: Path, destination: Path) -> None:
    """A work store holding only `source`'s extract, align and encode outputs."""
    for stage in PREPARED_STAGES:
        shutil.copytree(source / stage, destination / stage, symlinks=True)


def check_prepared_reused(source: Path, work: Path) -> None:
    """Stop when a run in `work` built extract, align or encode again (its keys differ from the copied ones)."""
    for stage in PREPARED_STAGES:
        if [path.name for path in outputs(work / stage)] != [path.name for path in outputs(source / stage)]:
            raise SystemExit(f"{work / stage}: the run did not reuse the copied {stage} output")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="a trained model (default: train one briefly)")
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/preview_cpu.json")
    args = parser.parse_args()
    params = yaml.safe_load(packaged_defaults_file().read_text())
    with tempfile.TemporaryDirectory(prefix="dva-preview-bench-") as folder:
        root = Path(folder)
        (root / "params.yaml").write_text(yaml.safe_dump(params))
        checkpoint = args.checkpoint or train_model(root, params, args.train_steps)

        def run(name: str, edit: dict, work: str, *options: str) -> None:
            runs[name] = dva_edit(root, checkpoint, edit, root / work, root / f"{work}.mp4", *options)
            print(f"{name:>26}: {runs[name]['seconds']:8.2f} s ({runs[name]['cpu_seconds']:8.2f} s CPU), "
                  f"{runs[name]['inverted_frames']:4d} frames inverted, "
                  f"load {runs[name]['load_before']} -> {runs[name]['load_after']}", flush=True)

        runs: dict[str, dict] = {}
        run("full_cold", EDIT, "cold-full")
        run("preview_cold", EDIT, "cold-preview", "--preview")
        run("full_after_preview_cold", EDIT, "cold-preview")
        for store in ("warm-full", "warm-preview"):
            copy_prepared(root / "cold-full", root / store)
        run("full_warm", EDIT, "warm-full")
        run("preview_warm", EDIT, "warm-preview", "--preview")
        run("preview_again_warm", EDIT, "warm-preview", "--preview")
        run("preview_second_edit_warm", SECOND_EDIT, "warm-preview", "--preview")
        for store in ("warm-full", "warm-preview"):
            check_prepared_reused(root / "cold-full", root / store)

        status = read_features(only_folder(root / "cold-full", "encode")).status
        face_frames = sum(state != NO_FACE for state in status)
        window = params["render"]["contact_sheet_columns"]
        expected = {"full_cold": face_frames, "preview_cold": window, "full_after_preview_cold": face_frames - window,
                    "full_warm": face_frames, "preview_warm": window, "preview_again_warm": 0,
                    "preview_second_edit_warm": 0}
        wrong = {name: (runs[name]["inverted_frames"], count) for name, count in expected.items()
                 if runs[name]["inverted_frames"] != count}
        identical = np.array_equal(np.load(only_folder(root / "cold-full", "invert") / NOISE_FILE),
                                   np.load(only_folder(root / "cold-preview", "invert") / NOISE_FILE))

    seconds = {name: values["seconds"] for name, values in runs.items()}
    cpu = {name: values["cpu_seconds"] for name, values in runs.items()}
    result = {
        "settings": {"video": f"bundled sample, {len(status)} frames, {face_frames} with a face",
                     "model": params["model"], "invert": params["invert"], "edit": EDIT, "second_edit": SECOND_EDIT,
                     "preview_frames": window,
                     "checkpoint": str(args.checkpoint) if args.checkpoint else f"trained {args.train_steps} steps"},
        "runs": runs,
        "ratio_preview_to_full_cold": round(seconds["preview_cold"] / seconds["full_cold"], 3),
        "ratio_preview_to_full_warm": round(seconds["preview_warm"] / seconds["full_warm"], 3),
        "cpu_ratio_preview_to_full_cold": round(cpu["preview_cold"] / cpu["full_cold"], 3),
        "cpu_ratio_preview_to_full_warm": round(cpu["preview_warm"] / cpu["full_warm"], 3),
        "breakdown_s": {
            # Every `dva edit` pays this before computing anything: start-up, imports, hashing, keys, the sheet.
            "process_floor": seconds["preview_again_warm"],
            "preview_window_work": round(seconds["preview_warm"] - seconds["preview_again_warm"], 2),
            "prepare_whole_video": round(seconds["preview_cold"] - seconds["preview_warm"], 2),
            "full_saved_by_preview": round(seconds["full_cold"] - seconds["full_after_preview_cold"], 2),
        },
        "full_after_preview": {"inverted_frames": runs["full_after_preview_cold"]["inverted_frames"],
                               "of_face_frames": face_frames, "inversion_identical_to_full_alone": identical},
        "inverted_frames_as_expected": not wrong,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
    }
    print(f"preview / full, wall (CPU): cold {result['ratio_preview_to_full_cold']:.3f} "
          f"({result['cpu_ratio_preview_to_full_cold']:.3f}), warm {result['ratio_preview_to_full_warm']:.3f} "
          f"({result['cpu_ratio_preview_to_full_warm']:.3f}); breakdown (wall s) {result['breakdown_s']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    # The figures are written either way (they locate the problem); a failed check still fails the run.
    if wrong:
        raise SystemExit(f"frames inverted (got, expected): {wrong}")
    if not identical:
        raise SystemExit("the full run after the preview inverted to other noise maps than the full run alone")


if __name__ == "__main__":
    if sys.argv[1:2] == [COUNT_FLAG]:
        counted_dva(Path(sys.argv[2]), sys.argv[3:])
    else:
        main()
