"""What a generate run shows: progress bars and a summary table on stderr, saved paths or JSON lines on stdout."""

from __future__ import annotations

import json
import sys

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.table import Table

from nitro_cli import distributed
from nitro_cli.errors import RuntimeFailure
from nitro_cli.generation import RESUME_HINT, CacheStats, ImageResult, PlannedImage, RunObserver
from nitro_cli.streams import is_broken_pipe, to_devnull
from nitro_cli.tables import print_table


def image_record(result: ImageResult, *, model: str, preset: str) -> dict:
    """The `--json` line for one image."""
    planned, job, taken = result.planned, result.planned.job, result.measurement
    return {
        "path": str(result.path) if result.path else None, "prompt": job.prompt, "negative_prompt": job.negative,
        "seed": planned.seed, "steps": job.steps, "guidance": job.guidance, "width": job.width, "height": job.height,
        "seconds": round(result.seconds, 4), "it_per_s": round(result.it_per_s, 3), "batch_size": result.batch_size,
        "peak_vram_mib": round(taken.peak_vram_mib, 1) if taken.peak_vram_mib is not None else None,
        "peak_rss_mib": round(taken.peak_rss_mib, 1), "blocked": result.blocked,
        "vae_fp32_redecode": result.redecoded, "preset": preset, "model": model,
    }


# The summary table's rows at most, the first and the last ones: a table of all 10,000 images of a big prompts
# file takes seconds and megabytes of stderr to print.
SUMMARY_ROWS = 20


class RunDisplay(RunObserver):
    """Rich progress bars for images and denoising steps (only on a terminal), one stdout line per image.
    `bars=False` leaves the bars out: of several processes sharing a terminal, only the main one draws them.
    `compiled`: the pipeline is compiled, so the first batch of each image size waits for the compiler."""

    def __init__(self, total_images: int, *, json_output: bool, model: str, preset: str, bars: bool = True,
                 compiled: bool = False):
        self.console = Console(stderr=True, soft_wrap=True)
        self._json = json_output
        self._model, self._preset = model, preset
        # Rich's bars move stdout's writes onto their console (stderr), above the bars: right when stdout is the
        # same terminal, but `nitro generate --json > images.jsonl` typed in a terminal would get an empty file.
        # Elapsed, then remaining (rich's estimate from the recent pace, as tqdm shows it; blank without a total).
        self._progress = Progress(TextColumn("{task.description:<7}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), TimeRemainingColumn(), console=self.console,
                                  disable=not (bars and self.console.is_terminal), redirect_stdout=sys.stdout.isatty())
        self._images = self._progress.add_task("images", total=total_images)
        self._steps = self._progress.add_task("steps", total=None)
        self._vae_fp32_said = False
        self._total, self._saved = total_images, 0
        self._stdout_gone = False
        self._announce_compiling = compiled and bars  # by the main process only, like the run's other notes
        self._compiled_sizes: set[str] = set()  # sizes whose first (compiling) call was announced

    def __enter__(self) -> "RunDisplay":
        self._progress.start()
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        self._progress.stop()
        if exc_type is KeyboardInterrupt:
            # A terminal's Ctrl-C stops every process of a launched run, each with its own share of the images.
            saved = (f"process {distributed.rank()} saved {self._saved} of its {self._total} image(s)"
                     if distributed.launched() else f"{self._saved} image(s) of {self._total} saved")
            resume = " Repeat the command with --resume to make the rest." if distributed.rank() == 0 else ""
            self.console.print(f"Stopped: {saved}, none half-written.{resume}", markup=False)

    def batch_started(self, batch: list[PlannedImage]) -> None:
        size = f"{batch[0].job.width}x{batch[0].job.height}"
        if self._announce_compiling and size not in self._compiled_sizes:
            # Otherwise the steps bar sits at 0 for a minute and looks hung.
            self._compiled_sizes.add(size)
            self.console.print(f"Compiling for {size} (the first call of each image size in a process: up to a "
                               "few minutes; cached on disk, so later processes load it faster)", markup=False)
        self._progress.reset(self._steps, total=batch[0].job.steps,
                             description=f"steps ({len(batch)} image{'s' if len(batch) > 1 else ''})")

    def step_done(self, step: int, total: int) -> None:
        self._progress.update(self._steps, completed=step, total=total)

    def image_done(self, result: ImageResult) -> None:
        self._progress.advance(self._images)
        self._saved += result.path is not None
        if result.redecoded and not self._vae_fp32_said:
            self.console.print(f"Warning: {result.planned.name}: the half-precision VAE gave NaN/black pixels; decoded "
                               "again with the VAE in fp32 (kept in fp32 for the rest of this run)", markup=False)
            self._vae_fp32_said = True
        if result.blocked:
            self.console.print(f"Blocked: {result.planned.name} (seed {result.planned.seed}) was blacked out by the "
                               "safety checker: not saved. Try another seed or prompt.", markup=False)
        if self._json:
            # ASCII (\u escapes): valid JSON whatever stdout's encoding is.
            self._print_stdout(json.dumps(image_record(result, model=self._model, preset=self._preset)))
        elif result.path is not None:
            self._print_stdout(str(result.path))

    def _print_stdout(self, line: str) -> None:
        if self._stdout_gone:
            return
        try:
            # One write, newline included: print() writes the line and its newline apart, and with PYTHONUNBUFFERED
            # each is a system call, between which another process sharing stdout (torchrun) can write its own.
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        except OSError as exc:
            self._stop_stdout()
            if is_broken_pipe(exc):
                # The reader went away (`nitro generate ... | head -1`): the images are the work, so the run goes
                # on, without printing.
                self.console.print("Note: stdout's reader went away; the run goes on, saving images without "
                                   "printing their paths.", markup=False)
                return
            # `--json > images.jsonl` on a disk that filled up: a record that goes on without its lines would be
            # silently incomplete, so the run stops (raised again in the run's thread when this is the writer's).
            raise RuntimeFailure(f"could not write to standard output: {exc.strerror or exc}",
                                 hint="free space where stdout goes (its last line may be cut short); "
                                      f"{RESUME_HINT}") from exc

    def _stop_stdout(self) -> None:
        to_devnull(sys.stdout)
        self._stdout_gone = True

    def summary(self, results: list[ImageResult], cache: CacheStats, total_seconds: float, device: str,
                processes: list[int] | None = None) -> None:
        """The run's table and totals; `processes`: images made by each process of a multi-process run."""
        on_gpu = device.startswith("cuda")
        table = Table(title="nitro generate", title_justify="left")
        for column in ("image", "seed", "s/image", "it/s", "peak VRAM MiB" if on_gpu else "peak RSS MiB", "note"):
            table.add_column(column, justify="left" if column in ("image", "note") else "right")
        half = SUMMARY_ROWS // 2
        shown = results if len(results) <= SUMMARY_ROWS else [*results[:half], None, *results[-half:]]
        for result in shown:
            if result is None:
                table.add_row(f"... {len(results) - 2 * half} more (every image: --json)", "", "", "", "", "")
                continue
            taken = result.measurement
            peak = taken.peak_vram_mib if on_gpu else taken.peak_rss_mib
            notes = [f"batch of {result.batch_size}"] if result.batch_size > 1 else []
            notes += ["VAE fp32 redecode"] if result.redecoded else []
            notes += ["BLOCKED: not saved"] if result.blocked else []
            table.add_row(result.planned.name, str(result.planned.seed), f"{result.seconds:.2f}",
                          f"{result.it_per_s:.2f}", f"{peak:.0f}", ", ".join(notes))
        print_table(self.console, table)
        reuse = f", {cache.hits} reused from the cache" if cache.enabled else " (prompt cache off)"
        blocked = sum(r.blocked for r in results)
        self.console.print(f"Prompt encoding: {cache.encode_seconds:.2f} s for {cache.encodes} encode(s){reuse}. "
                           f"Total: {total_seconds:.2f} s for {len(results) - blocked} saved image(s)"
                           + (f", {blocked} blocked" if blocked else "") + ".")
        if processes:
            self.console.print(f"Processes: {len(processes)}, images made by each: "
                               f"{', '.join(map(str, processes))}.")
