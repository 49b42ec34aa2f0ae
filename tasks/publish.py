"""Prefect tasks: the model card in every trained folder of the run, and, opt-in (`output.push_to_hub`),
publishing a promoted run to the Hugging Face Hub. Neither is cached: both are cheap and load no model, and the
card is a pure function of the stage records, so writing it again is harmless.

A failed publish fails the run (after its folder, registry entry and report are complete): a scheduled retrain
whose adapter silently never reached the Hub would look green while the Hub kept serving the old one. The message
names the `smoltune push` command that retries it. No task retries: huggingface_hub already retries transient
upload errors, and a refused token will not heal by trying again.
"""

from __future__ import annotations

from collections.abc import Callable

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact
from prefect.cache_policies import NO_CACHE

from smoltune.config import OutputConfig
from smoltune.errors import ConfigError, PublishError
from smoltune.share.model_card import write_model_cards
from smoltune.share.push import push_run

HUB_ARTIFACT_KEY = "smoltune-hub-commit"


@task(name="model_card", cache_policy=NO_CACHE)
def model_card_task(summary: dict) -> list[str]:
    written = [str(path) for path in write_model_cards(summary)]
    get_run_logger().info("model card written to %s", ", ".join(written) or "no folder (none exists)")
    return written


def hub_write_token(secret_block: str | None) -> str | None:
    """The token in the Prefect Secret block `secret_block`, passed to huggingface_hub directly (never put in the
    environment, where every later hub download of this process would use a write token)."""
    if not secret_block:
        return None
    from prefect.blocks.system import Secret

    try:
        return str(Secret.load(secret_block).get())
    except ValueError as err:
        raise ConfigError([f"output.push_token_secret: no Prefect Secret block {secret_block!r} ({err})"]) from None


def retry_command(run_dir: str, output: OutputConfig) -> str:
    flags = " --private" if output.push_private else ""
    flags += f" --revision {output.push_revision}" if output.push_revision else ""
    return f"smoltune push {run_dir} --repo {output.push_to_hub}{flags}"


def publish_promoted(summary: dict, output: OutputConfig, log: Callable[[str], object]) -> str | None:
    """Publish the run when `output.push_to_hub` names a repo and the run was promoted; returns the commit URL.
    A failure names the run (complete) and the command that retries the publish."""
    if not output.push_to_hub:
        return None
    if not (summary.get("promotion") or {}).get("promoted"):
        log(f"not published to {output.push_to_hub}: the run was not promoted")
        return None
    run_dir = summary["run_dir"]
    try:
        token = hub_write_token(output.push_token_secret)
        url = push_run(run_dir, output.push_to_hub, output.push_private, output.push_revision, token)
    except PublishError as err:
        raise PublishError(
            f"run {run_dir} finished and was promoted, but publishing it to {output.push_to_hub} failed: {err}. "
            f"Retry with `{retry_command(run_dir, output)}`"
        ) from None
    log(f"published to {output.push_to_hub}: {url}")
    return url


@task(name="push_to_hub", cache_policy=NO_CACHE)
def push_task(summary: dict, output: OutputConfig) -> str | None:
    url = publish_promoted(summary, output, get_run_logger().info)
    if url:
        description = f"smoltune run {summary['run_name']}"
        create_link_artifact(key=HUB_ARTIFACT_KEY, link=url, link_text=str(output.push_to_hub), description=description)
    return url
