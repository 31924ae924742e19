"""`nitro export onnx`: a model as an ONNX pipeline folder, for ONNX Runtime on CPU/edge boxes."""

from __future__ import annotations

import shlex
import sys
from typing import Annotated

import typer

from nitro_cli import options
from nitro_cli.onnx_export import DEFAULT_OPSET


def onnx(
    model: options.ModelOption = None,
    out: Annotated[str, typer.Option("--out", "-o", metavar="DIR", help="Folder to write (new, empty, or an earlier export).")] = ...,
    opset: Annotated[int, typer.Option("--opset", min=14, help="ONNX opset of the graphs.")] = DEFAULT_OPSET,
) -> None:
    """Export UNet, text encoder, VAE decoder/encoder (+ safety checker) as ONNX, with tokenizer and scheduler.

    The folder loads with diffusers' OnnxStableDiffusionPipeline, and runs with
    `nitro generate --model DIR --set backend=onnx`.
    """
    from rich.console import Console
    from rich.table import Table

    from nitro_cli.models import DEFAULT_MODEL
    from nitro_cli.onnx_export import export_onnx

    report = export_onnx(model, options.out_folder(out), opset=opset)
    table = Table(title=f"ONNX export of {model or DEFAULT_MODEL}")
    table.add_column("component")
    table.add_column("size", justify="right")
    for name, size in report.components.items():
        table.add_row(name, f"{size / 2**20:.1f} MiB")
    for name, why in report.skipped:
        table.add_row(name, f"not exported: {why}")
    console = Console(stderr=True)
    console.print(table)
    # Plain print: a command to paste, not wrapped at the terminal's width or read as rich markup ("[1]").
    print(f"Run it: nitro generate \"PROMPT\" --model {shlex.quote(str(report.out))} --set backend=onnx",
          file=sys.stderr)
    print(report.out, file=sys.stdout)
