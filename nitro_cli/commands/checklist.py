"""`nitro checklist`: each tier's settings, whether this machine can do them, claimed vs measured."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Optional

import typer

from nitro_cli import options


def _where_measured(report_path: Path | None, looked_in: Path, damaged: Path | None = None) -> str:
    if report_path is not None:
        return f"Measured: from {report_path}"
    if damaged is not None:  # there is a report, so "no bench report" would send the user looking for one
        return (f"Measured: nothing; the newest bench report, {damaged}, is damaged "
                "(run `nitro bench`, or pass --bench FILE)")
    return f"Measured: no bench report in {looked_in} (run `nitro bench`, or pass --bench FILE)"


def _markdown(tiers, source_line: str, machine_line: str) -> str:
    from nitro_cli.tier_checklist import measured_text

    lines = [f"Machine: {machine_line}. {source_line}.", ""]
    for tier in tiers:
        lines += [f"### {tier.tier}", "", tier.scenario, "",
                  f"Claimed (article): {tier.claimed or '-'}. Measured: {measured_text(tier.measured)}.", ""]
        if not tier.items:
            lines += ["The reference: every other tier is measured against it.", ""]
            continue
        lines += ["| item | setting | on this machine | article claims |", "|---|---|---|---|"]
        for item in tier.items:
            can = "yes" if item.available else "no"
            verdict = f"{can}: {item.reason}" if item.reason else can
            cells = (item.name, f"`{item.setting}`", verdict, item.claimed or "-")
            # A | in a cell (a library's error text among the reasons) would end the cell.
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        lines.append("")
        lines += [f"- {note}" for note in tier.notes] + ([""] if tier.notes else [])
    return "\n".join(lines)


def _show(tiers, source_line: str, machine_line: str) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from nitro_cli.tables import print_table
    from nitro_cli.tier_checklist import measured_text

    console = Console()  # the report is the command's output (`nitro checklist | less`); warnings go to stderr
    console.print(f"Machine: {machine_line}", markup=False)
    for tier in tiers:
        # Text, not markup: a reason's `pip install 'nitro-cli[xformers]'` must keep its [xformers].
        table = Table(title=escape(f"{tier.tier}: {tier.scenario}"),
                      caption=escape(f"claimed: {tier.claimed or '-'} | "
                                     f"measured: {measured_text(tier.measured)}"))
        for column in ("item", "setting", "here", "why / instead", "article claims"):
            table.add_column(column)
        for item in tier.items:
            here = "[green]yes[/]" if item.available else "[yellow]no[/]"
            table.add_row(escape(item.name), escape(item.setting), here, escape(item.reason),
                          escape(item.claimed))
        if not tier.items:
            table.add_row("(none)", "the reference", "", "every tier is measured against it", "")
        print_table(console, table, widen_off_terminal=False)
        for note in tier.notes:
            console.print(f"Note: {note}", markup=False, highlight=False)
    console.print(source_line, markup=False, highlight=False)


def checklist(
    tier: Annotated[Optional[str], typer.Option("--tier", help="One tier (a shipped preset name or YAML path); default: all.")] = None,
    bench: Annotated[Optional[str], typer.Option("--bench", metavar="FILE", show_default="newest in the bench cache folder", help="`nitro bench --json` report to take measured numbers from.")] = None,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print Markdown tables on stdout.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print a JSON list of tiers on stdout.")] = False,
) -> None:
    """Each tier's settings: can this machine do them, what the article claims, what `nitro bench` measured."""
    from nitro_cli import hardware, paths
    from nitro_cli.benchmark import newest_in_history
    from nitro_cli.diagnosis import recommend
    from nitro_cli.errors import UsageError
    from nitro_cli.tier_checklist import build_checklist, read_bench_report, tier_names

    options.check_not_blank(tier, "--tier", "leave it out for every tier, or name one (a shipped preset or a .yaml file)")
    options.check_not_blank(bench, "--bench", "leave it out for the newest report `nitro bench` kept, or give a file")
    if markdown and json_output:
        raise UsageError("--markdown and --json both print on stdout: choose one")
    report_path = Path(bench) if bench else newest_in_history()
    report, damaged = None, None
    if report_path:
        try:
            report = read_bench_report(report_path)
        except UsageError as exc:
            if bench:  # the user's own file: their mistake to fix
                raise
            # A damaged file in the cache must not take the checklist down: its tiers are not measured.
            print(f"Warning: {exc.message}: skipped, so nothing is measured", file=sys.stderr)
            report_path, damaged = None, report_path
    machine = hardware.probe(deep=True)
    tiers = build_checklist(machine, [tier] if tier else tier_names(), report, report_path)

    gpu = machine.gpus[0] if machine.has_gpu else None
    machine_line = (f"{gpu.name} ({gpu.total_vram_mib} MiB, compute capability {gpu.capability})" if gpu
                    else "no CUDA device (CPU)") + f"; recommended preset: {recommend(machine).label}"
    source_line = _where_measured(report_path, paths.bench_dir(), damaged)
    if json_output:
        print(json.dumps([asdict(t) for t in tiers], indent=2))
    elif markdown:
        print(_markdown(tiers, source_line, machine_line))
    else:
        _show(tiers, source_line, machine_line)
