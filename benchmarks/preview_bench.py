"""`dva edit --preview` against the full `dva edit` on the bundled sample: wall times and their ratio.

Run: `python benchmarks/preview_bench.py [--checkpoint data/train/model.safetensors] [--train-steps 20]
[--out benchmarks/results/preview.json]`.

Settings are the demo's (`params.yaml` minus its videos and edits: the tiny 64 px model, BDIA S=10), on the
whole sample (120 frames). Without `--checkpoint` a model of the demo's architecture is trained for a few
steps first (not timed): the wall times depend on the architecture, not on how well it is trained. Each
run is its own `dva edit` process, as a user would start it:

1. the full edit in a fresh work store (the baseline);
2. `--preview` in another fresh work store (cold: extract, align and encode of the whole video included);
3. `--preview` of a second edit in that store (warm: the video is prepared, the window already inverted);
4. the full edit in that store after the previews: it inverts only the frames the preview did not.

Prints a table and writes JSON; the ratios are preview / full (1.).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.params import packaged_defaults_file  # noqa: E402
from stages.sample import sample_path  # noqa: E402

EDIT = {"kind": "expression", "expressions": {"smile": 0.5, "mouth_open": [[0.0, 0.0], [2.0, 0.8], [4.0, 0.0]]}}
SECOND_EDIT = {"kind": "expression", "expressions": {"smile": 1.0}}


def train_model(root: Path, params: dict, steps: int) -> Path:
    """A model of the params' architecture trained `steps` steps on the sample (the demo's recipe, shortened)."""
    from pipeline.faces.settings import AlignParams, EncodeParams
    from pipeline.params import parse_params
    from stages.align import align_video
    from stages.encode import encode_video
    from stages.extract import extract_video
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


def dva_edit(root: Path, checkpoint: Path, edit: dict, work: Path, out: Path, *options: str) -> float:
    """Wall seconds of one `dva edit` process."""
    dva = Path(sys.executable).parent / "dva"
    command = [str(dva), "edit", str(sample_path()), "--checkpoint", str(checkpoint), "--edit", json.dumps(edit),
               "--out", str(out), "--work", str(work), "--params", str(root / "params.yaml"), "--quiet", *options]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="a trained model (default: train one briefly)")
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/preview.json")
    args = parser.parse_args()
    params = yaml.safe_load(packaged_defaults_file().read_text())
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "params.yaml").write_text(yaml.safe_dump(params))
        checkpoint = args.checkpoint or train_model(root, params, args.train_steps)
        times = {
            "full": dva_edit(root, checkpoint, EDIT, root / "work-full", root / "full.mp4"),
            "preview_cold": dva_edit(root, checkpoint, EDIT, root / "work", root / "edit.mp4", "--preview"),
            "preview_warm": dva_edit(root, checkpoint, SECOND_EDIT, root / "work", root / "edit.mp4", "--preview"),
            "full_after_preview": dva_edit(root, checkpoint, EDIT, root / "work", root / "edit.mp4"),
        }
    result = {
        "settings": {"video": "bundled sample, 120 frames", "model": params["model"], "invert": params["invert"],
                     "edit": EDIT, "preview_frames": params["render"]["contact_sheet_columns"],
                     "checkpoint": str(args.checkpoint) if args.checkpoint else f"trained {args.train_steps} steps"},
        "seconds": {name: round(value, 2) for name, value in times.items()},
        "ratio_preview_cold_to_full": round(times["preview_cold"] / times["full"], 3),
        "ratio_preview_warm_to_full": round(times["preview_warm"] / times["full"], 3),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
    }
    for name, value in result["seconds"].items():
        print(f"{name:>20}: {value:8.2f} s")
    print(f"preview / full: cold {result['ratio_preview_cold_to_full']:.3f}, "
          f"warm {result['ratio_preview_warm_to_full']:.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
