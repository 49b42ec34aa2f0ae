"""Command line: `smoltune run`, `smoltune compare`, `smoltune chat`.

    smoltune run --config configs/smoke.yaml --set train.max_steps=2
    smoltune compare --config configs/compare.yaml
    smoltune chat runs/<run> --prompt "Add the two numbers: 3 and 4"

The last line printed is the run folder, so scripts can do `run_dir=$(smoltune run ... | tail -n1)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from smoltune.config import ConfigError, load_config
from smoltune.pipeline.settings import apply_prefect_defaults

app = typer.Typer(help="Fine-tune small language models with LoRA, orchestrated by Prefect.", no_args_is_help=True)

USAGE_ERROR = 2  # the exit status of a job that cannot start (bad config, unknown stage, missing run)


def fail(message: object) -> typer.Exit:
    """Print `error: message` on stderr; the caller raises the returned exit (status 2) from None."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(USAGE_ERROR)


@app.callback()
def main() -> None:
    """smoltune: data checks, LoRA training, evaluation and a report, one Prefect flow."""


@app.command()
def run(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML job file.")] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", "-s", help="Override a field: --set train.max_steps=5")
    ] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Recompute every stage.")] = False,
    refresh: Annotated[
        list[str] | None, typer.Option("--refresh", help="Recompute this stage even if cached (repeatable).")
    ] = None,
) -> None:
    """Run the finetune flow and print the run folder. Stages whose inputs did not change come from the cache."""
    try:
        pipeline = load_config(config, overrides or [])
    except ConfigError as err:
        raise fail(err) from None
    apply_prefect_defaults()
    from flows.finetune import STAGES, finetune  # heavy: imports prefect

    unknown = sorted(set(refresh or []) - set(STAGES))
    if unknown:
        raise fail(f"--refresh takes stages {', '.join(STAGES)}; got {', '.join(unknown)}")
    run_dir = finetune(config=pipeline, refresh=["all"] if no_cache else list(refresh or []))
    typer.echo(run_dir)


@app.command()
def compare(
    config: Annotated[Path, typer.Option("--config", "-c", help="Compare YAML (job + variants).")] = Path(
        "configs/compare.yaml"
    ),
    overrides: Annotated[
        list[str] | None, typer.Option("--set", "-s", help="Override a shared field: --set train.max_steps=5")
    ] = None,
) -> None:
    """Train every variant on the same data and print the folder holding the comparison report."""
    from smoltune.config import load_compare_config

    try:
        compare_config = load_compare_config(config, overrides or [])
    except ConfigError as err:
        raise fail(err) from None
    apply_prefect_defaults()
    from flows.compare import compare as compare_flow  # heavy: imports prefect

    typer.echo(compare_flow(config=compare_config))


@app.command()
def chat(
    run_dir: Annotated[Path, typer.Argument(help="A run folder printed by `smoltune run`.")],
    prompt: Annotated[str | None, typer.Option("--prompt", "-p", help="Answer once and exit.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer, in tokens.")] = 256,
) -> None:
    """Chat with a run's tuned model; tokens are printed as they are generated."""
    from smoltune.serve.chat import RunNotFoundError, answer_prompt, load_run

    try:
        model, tokenizer, template = load_run(run_dir)
    except RunNotFoundError as err:
        raise fail(err) from None

    def respond(text: str) -> None:
        for piece in answer_prompt(model, tokenizer, template, text, max_new_tokens):
            typer.echo(piece, nl=False)
        typer.echo()

    if prompt is not None:
        respond(prompt)
        return
    typer.echo("Type an instruction; an empty line or Ctrl-D ends.", err=True)
    while True:
        try:
            text = input("> ")
        except EOFError:
            break
        if not text.strip():
            break
        respond(text)


if __name__ == "__main__":
    app()
