"""The ``custody`` command line (typer)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer(help="SKA custody wallet: HSM-enforced policies for treasury transfers.",
                  no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks: one JSON object per line, the last the headline.",
                        no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@app.command()
def demo(data_dir: Path = typer.Option(Path(".custody-demo"), help="Where the demo HSM lives."),
         ) -> None:
    """Run the treasury demo on the embedded default (in-process HSM, SQLite)."""
    from .demo import run_demo

    if not run_demo(data_dir, Console()):
        raise typer.Exit(1)


@bench_app.command("hsm")
def bench_hsm(iterations: int = typer.Option(2000, min=10, help="Signatures per round."),
              rounds: int = typer.Option(3, min=1, help="Rounds; the best of each is kept."),
              batch: int = typer.Option(100, min=1, max=1000, help="Payloads per sign_batch."),
              ) -> None:
    """Raw coincurve signs/s vs. the HSM's policy-checked auto tier (headline: ratio)."""
    from .bench import bench_hsm as run
    from .bench import print_lines

    print_lines(run(iterations, rounds, batch))


if __name__ == "__main__":
    app()
