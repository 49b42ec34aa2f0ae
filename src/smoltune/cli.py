"""Command line: `smoltune run`, `smoltune compare`, `smoltune chat`, `smoltune serve`, `smoltune push`.

    smoltune run --config configs/smoke.yaml --set train.max_steps=2
    smoltune compare --config configs/compare.yaml
    smoltune chat runs/<run> --prompt "Add the two numbers: 3 and 4"

The last line printed is the run folder, so scripts can do `run_dir=$(smoltune run ... | tail -n1)`.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from smoltune.config import PipelineConfig, load_config
from smoltune.errors import ConfigError, SmoltuneError, storage_error
from smoltune.pipeline.settings import apply_prefect_defaults, quiet_user_error_tracebacks

app = typer.Typer(help="Fine-tune small language models with LoRA, orchestrated by Prefect.", no_args_is_help=True)

USAGE_ERROR = ConfigError.exit_code  # a job that cannot start (bad config, unknown stage, missing run)
T = TypeVar("T")
_debug = {"on": False}


def fail(message: object, code: int = USAGE_ERROR) -> typer.Exit:
    """Print `error: message` on stderr; the caller raises the returned exit from None."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """A SmoltuneError ends the command with its message and exit code (see smoltune.errors); anything else is
    a bug and keeps its traceback. `--debug` shows the traceback of every error."""
    try:
        yield
    except SmoltuneError as err:
        if _debug["on"]:
            traceback.print_exc()
        raise fail(err, err.exit_code) from None
    except Exception as err:
        storage = storage_error(err)  # a full disk, permission, read-only... whichever library met it
        if storage is None:
            raise
        if _debug["on"]:
            traceback.print_exc()
        raise fail(storage, storage.exit_code) from None


def guarded(call: Callable[[], T]) -> T:
    with user_errors():
        return call()


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Print the full traceback of every error.")] = False,
) -> None:
    """smoltune: data checks, LoRA training, evaluation and a report, one Prefect flow."""
    _debug["on"] = debug
    if not debug:
        quiet_user_error_tracebacks()


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
    """Run the finetune flow (the preference flow when the job has a `preference` section: SFT then DPO) and
    print the run folder. Stages whose inputs did not change come from the cache."""
    pipeline = guarded(lambda: load_config(config, overrides or []))
    apply_prefect_defaults()
    # The training process starts before Prefect does: its imports overlap Prefect's import and start-up and
    # the stages before training, all of them cached on a retrain (the flow's own prestart finds it waiting).
    with first_training_prestarted(pipeline):
        if pipeline.preference is not None:
            from flows.preference import STAGES
            from flows.preference import preference as job  # heavy: imports prefect
        else:
            from flows.finetune import STAGES
            from flows.finetune import finetune as job

        unknown = sorted(set(refresh or []) - set(STAGES))
        if unknown:
            raise fail(f"--refresh takes stages {', '.join(STAGES)}; got {', '.join(unknown)}")
        run_dir = guarded(lambda: job(config=pipeline, refresh=["all"] if no_cache else list(refresh or [])))
    typer.echo(run_dir)


def first_training_prestarted(pipeline: PipelineConfig) -> AbstractContextManager[None]:
    """The SFT training worker, importing while Prefect starts (smoltune.train.prestart). Not for a preference
    job: its SFT training is usually cached, and the preference worker is the one it waits for."""
    from smoltune.train.runner import prestarted_training

    return nullcontext() if pipeline.preference is not None else prestarted_training(pipeline.train)


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

    compare_config = guarded(lambda: load_compare_config(config, overrides or []))
    apply_prefect_defaults()
    from flows.compare import compare as compare_flow  # heavy: imports prefect

    typer.echo(guarded(lambda: compare_flow(config=compare_config)))


@app.command()
def chat(
    run_dir: Annotated[Path, typer.Argument(help="A run folder printed by `smoltune run`.")],
    prompt: Annotated[str | None, typer.Option("--prompt", "-p", help="Answer once and exit.")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, max=32768, help="Longest answer, in tokens.")] = 256,
) -> None:
    """Chat with a run's tuned model; tokens are printed as they are generated."""
    from smoltune.serve.chat import answer_prompt, load_run

    model, tokenizer, template = guarded(lambda: load_run(run_dir))

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


@app.command()
def serve(
    adapter: Annotated[
        list[str] | None, typer.Option("--adapter", "-a", help="NAME=RUN_DIR or NAME=ADAPTER_DIR (repeatable).")
    ] = None,
    base: Annotated[str, typer.Option(help="The base model, as model.source: embedded, a folder or a hub id.")] = (
        "embedded"
    ),
    registry: Annotated[
        Path | None, typer.Option(help="Also serve the promoted adapter of every entry of this registry.json.")
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    max_batch: Annotated[int, typer.Option(min=1, help="Requests decoded together in one step, at most.")] = 8,
    kv_budget_tokens: Annotated[
        int | None, typer.Option(help="Tokens the KV cache may hold across requests; beyond it requests get 503.")
    ] = None,
    prefix_cache_tokens: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Tokens of prompts kept so that prompts starting alike prefill only the rest (0: off; default: "
            "a quarter of the KV budget).",
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="SMOLTUNE_API_KEY", help="Require 'Authorization: Bearer KEY' on /v1/* and /tokenize."),
    ] = None,
    allow_adapter_loading: Annotated[
        bool, typer.Option(help="Allow POST /v1/adapters (only folders under --adapter-root).")
    ] = False,
    adapter_root: Annotated[
        Path | None, typer.Option(help="The folder runtime-loaded adapters must lie under.")
    ] = None,
    max_adapters: Annotated[int, typer.Option(min=0, help="Attached adapters at most (startup ones included).")] = 16,
    request_timeout: Annotated[float, typer.Option(min=1, help="Seconds a request may take before a 504.")] = 300,
    drain_timeout: Annotated[float, typer.Option(min=0, help="Seconds SIGTERM waits for in-flight requests.")] = 30,
) -> None:
    """Serve the base model and adapters behind an OpenAI-compatible API (/v1/models, /v1/chat/completions,
    /v1/completions with log-probs, streaming, /tokenize, /detokenize, /metrics, /health; POST /v1/adapters with
    --allow-adapter-loading). SIGTERM drains in-flight requests and exits 0."""
    from smoltune.serve.api import ServeOptions
    from smoltune.serve.auth import exposure_warning
    from smoltune.serve.engine import load_engine, registry_adapters
    from smoltune.serve.metrics import ServeMetrics
    from smoltune.serve.server import serve_until_signalled

    if allow_adapter_loading and adapter_root is None:
        raise fail("--allow-adapter-loading needs --adapter-root DIR (the only folders adapters are loaded from)")
    named: dict[str, str] = {}
    for item in adapter or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise fail(f"--adapter {item!r}: use NAME=RUN_DIR or NAME=ADAPTER_DIR")
        named[name] = path
    if registry is not None:
        named |= guarded(lambda: registry_adapters(registry))
    if len(named) > max_adapters:
        raise fail(f"{len(named)} adapters to serve but --max-adapters is {max_adapters}; raise it")
    metrics = ServeMetrics()
    engine = guarded(
        lambda: load_engine(
            base,
            named,
            max_batch=max_batch,
            kv_budget_tokens=kv_budget_tokens,
            observer=metrics,
            prefix_cache_tokens=prefix_cache_tokens,
        )
    )
    if warning := exposure_warning(host, api_key):
        typer.echo(warning, err=True)
    options = ServeOptions(api_key, allow_adapter_loading, adapter_root, max_adapters, request_timeout)
    typer.echo(f"serving {', '.join([engine.base_name, *engine.adapters])} on http://{host}:{port}/v1", err=True)
    serve_until_signalled(engine, options, metrics, host, port, drain_timeout)
    typer.echo("drained; stopped", err=True)


@app.command()
def push(
    run_dir: Annotated[Path, typer.Argument(help="A run folder printed by `smoltune run`.")],
    repo: Annotated[
        str | None, typer.Option("--repo", help="OWNER/NAME on the Hub; default: the run's output.push_to_hub.")
    ] = None,
    private: Annotated[bool, typer.Option("--private", help="Create the repo private.")] = False,
    revision: Annotated[str | None, typer.Option("--revision", help="Branch, created from main if missing.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the files to upload; send nothing.")] = False,
) -> None:
    """Publish a run's adapter (a full fine-tune's model), model card, report and loss curve to the Hugging Face
    Hub in one commit and print the commit URL. Token: the run's output.push_token_secret, else HF_TOKEN."""
    from smoltune.share.push import push_run, push_target, upload_plan

    target = guarded(lambda: push_target(run_dir, repo, private, revision))
    if dry_run:
        for name, path in guarded(lambda: upload_plan(run_dir)):
            typer.echo(f"{name} <- {path}")
        return
    token = None
    if target.token_secret:
        apply_prefect_defaults()
        from tasks.publish import hub_write_token  # heavy: imports prefect

        token = guarded(lambda: hub_write_token(target.token_secret))
    typer.echo(guarded(lambda: push_run(run_dir, target.repo, target.private, target.revision, token)))


if __name__ == "__main__":
    app()
