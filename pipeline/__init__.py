"""The library the stages share, grouped by concern.

- `video`: frames in and out with exact timestamps and audio; video manifests.
- `faces`: detection, tracking, alignment and masks, identity codes, the reference's face networks.
- `model`: the autoencoder (UNet), the DDIM/BDIA sampler (`model/diffusion.py`), checkpoints, the
  training loss (`model/losses.py`) and loop, batched inversion and decoding.
- `editing`: identity, motion and expression edits, and the paste-back blend (`editing/compositing.py`).
- `evaluation`: identity consistency (TL-ID/TG-ID) and landmark following.
- `core`: validated params, user-facing errors, atomic outputs, hashing, tables, progress.
- `runs`: the files every stage writes and their readers, content keys, lineage records and audits.

Nothing here imports `stages` or `workflows` (tests/test_dvc_dependencies.py checks it).
"""
