"""Metrics of edited videos: TL-ID/TG-ID identity consistency and landmark following."""
