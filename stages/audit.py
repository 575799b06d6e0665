"""Show what produced an artifact, back to the raw videos, and verify every hash on disk.

Reads the `lineage.json` records that every stage writes beside its outputs (from `dvc repro`,
`dva batch` or a single stage command) and, for stages run by DVC, `dvc.lock`. Exits with status 1
naming the file when any file in the chain is missing or changed.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from pipeline.runs.audit import AuditReport, audit


def _short(digest: str | None) -> str:
    return digest[:12] if digest else "-"


def format_report(report: AuditReport) -> str:
    """The chain as indented text: records, then sources and weights, then a verdict."""
    lines = [f"{report.target}  sha256 {_short(report.target_sha256)}"]
    for record in report.records:
        code = record.get("code") or {}
        revision = (code.get("git_revision") or "unknown")[:10]
        state = {True: "dirty", False: "clean"}.get(code.get("dirty"), "?")
        dvc = record.get("dvc")
        lock = ""
        if dvc:
            lock = "  dvc.lock ok" if dvc.get("lock_entry") else "  (no dvc.lock entry)"
            if dvc.get("code_changed"):
                lock += f" (code changed since: {', '.join(dvc['code_changed'])})"
        indent = "  " * (record["depth"] + 1)
        lines.append(f"{indent}<- {record['stage']:<9} {record['folder']}  run {record['run_id']}  "
                     f"{record['created']}  code {revision} ({state}){lock}")
    lines.append("sources:")
    lines += [f"  {source['path']}  sha256 {source['sha256']}"
              + (f"  (md5 checked against {source['dvc_file']})" if "dvc_file" in source else "")
              for source in report.sources]
    lines.append("weights:")
    for weight in report.weights:
        trained = f"  trained on {weight['training_files']} files" if "training_files" in weight else ""
        lines.append(f"  {weight['role']}: {weight['path'] or '(inside a package)'}  sha256 {weight['sha256']}{trained}")
    verdict = "verified" if report.ok else "FAILED"
    lines.append(f"{verdict}: {report.files_verified} files checked, {len(report.records)} records, "
                 f"chain reaches {len(report.sources)} source file(s)")
    return "\n".join(lines)


def cli(
    path: Path = typer.Argument(..., help="An output file or artifact folder (from dvc repro, dva batch or a stage)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    report = audit(path)
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        typer.echo(format_report(report))
    if not report.ok:
        for item in report.problems:
            typer.echo(f"error: {item['path']}: {item['problem']}", err=True)
        raise typer.Exit(1)
