"""Video in and out: lossless frame extraction, timestamps, encoding with audio, and video manifests."""
