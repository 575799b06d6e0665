"""Faces: detection, tracking, FFHQ alignment and masks, identity codes, and the reference's face networks."""
