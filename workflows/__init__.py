"""Workflows above the stages: the one-off `dva edit`, the Prefect batch flow and its schedules.

They compose the stage functions of `stages/` (each of which reads and writes artifacts through
`pipeline/` only) and cache their outputs by the content keys of `pipeline.runs.store`.
"""
