"""Runs and their records: the files each stage writes, content keys, lineage records and their audit."""
