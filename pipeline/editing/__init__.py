"""Edits: identity directions (classifier, reference, text/CLIP), motion and expression codes, paste-back blending."""
