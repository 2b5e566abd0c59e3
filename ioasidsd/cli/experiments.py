"""``ioasidctl experiment``: run quota-policy experiments in this process (no daemon needed).

``run POLICY``, ``compare A B ...``, ``sweep POLICY --set KEY=V1,V2 ...``: tables on a terminal,
``--json`` for the result object, ``--out DIR`` for JSON, CSV and PNG files
(``ioasidsd.experiments.report``). A policy with an error is one line (file, key, reason) on
stderr and exit status 2, before anything runs.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
import tomllib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import click

if TYPE_CHECKING:  # the engine is imported by the commands that run it: ioasidctl starts fast
    from ioasidsd.experiments.errors import PolicyError
    from ioasidsd.experiments.policy import Policy


def _reject(exc: PolicyError) -> NoReturn:
    click.echo(f"ioasidctl: {exc}", err=True)
    raise SystemExit(2)


def _load(path: str, settings: dict[str, Any] | None = None) -> Policy:
    from ioasidsd.experiments.errors import PolicyError
    from ioasidsd.experiments.policy import load_policy

    try:
        policy = load_policy(path)
        return policy.with_settings(settings) if settings else policy
    except PolicyError as exc:
        exc.file = exc.file or path
        _reject(exc)


class _Progress:
    """A progress bar on stderr, shown only on a terminal and only once a run has taken more
    than about a second."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.started = time.monotonic()
        self.bar: Any = None
        self.shown = 0
        self.tty = sys.stderr.isatty()

    def __call__(self, done: float, total: float) -> None:
        if not self.tty or time.monotonic() - self.started < 1.0:
            return
        if self.bar is None:
            self.bar = click.progressbar(length=1000, label=self.label, file=sys.stderr)
            self.bar.__enter__()
        now = int(1000 * done / total) if total else 1000
        if now > self.shown:
            self.bar.update(now - self.shown)
            self.shown = now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


def _run(policies: Sequence[Policy], workers: int | None, scheduler: str | None,
         keep_series: bool = False) -> tuple[list[dict[str, Any]], list[Any]]:
    from ioasidsd.experiments.runner import run_policies

    progress = _Progress("simulating")
    try:
        return run_policies(policies, workers=workers, scheduler=scheduler,
                            keep_series=keep_series, progress=progress)
    except OSError as exc:
        click.echo(f"ioasidctl: cannot run the experiment: {exc}", err=True)
        raise SystemExit(1) from None
    finally:
        progress.close()


def _echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2))


workers_option = click.option("--workers", type=click.IntRange(1, 1024), default=None,
                              help="Dask workers of the embedded cluster (default: the number "
                                   "of cores).")
scheduler_option = click.option("--scheduler", metavar="ADDRESS", default=None,
                                help="Send the tasks to this existing Dask scheduler instead.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
out_option = click.option("--out", type=click.Path(file_okay=False), default=None,
                          help="Write results.json, CSV tables and PNG plots into DIR.")


@click.group()
def experiment() -> None:
    """Quota-policy experiments: a policy's tenants on the model, on simulated time."""


@experiment.command()
@click.argument("policy", type=click.Path(dir_okay=False))
@json_option
@out_option
@click.option("--seed", type=click.IntRange(0), default=None, help="Override run.seed.")
@click.option("--replications", type=click.IntRange(1), default=None,
              help="Override run.replications.")
@workers_option
@scheduler_option
def run(policy: str, as_json: bool, out: str | None, seed: int | None,
        replications: int | None, workers: int | None, scheduler: str | None) -> None:
    """Run POLICY (a TOML policy file) and report blocking, refusals, use and fairness."""
    from ioasidsd.experiments import report

    settings: dict[str, Any] = {}
    if seed is not None:
        settings["run.seed"] = seed
    if replications is not None:
        settings["run.replications"] = replications
    checked = _load(policy, settings)
    (result,), (first,) = _run([checked], workers, scheduler, keep_series=out is not None)
    if out is not None:
        report.write_run(out, result, first)
    if as_json:
        _echo_json(result)
    else:
        click.echo(report.format_run(result))


@experiment.command()
@click.argument("policies", nargs=-1, required=True, type=click.Path(dir_okay=False))
@json_option
@out_option
@workers_option
@scheduler_option
def compare(policies: tuple[str, ...], as_json: bool, out: str | None, workers: int | None,
            scheduler: str | None) -> None:
    """Run several POLICIES and show them side by side."""
    from ioasidsd.experiments import report

    checked = [_load(p) for p in policies]
    results, _ = _run(checked, workers, scheduler)
    if out is not None:
        report.write_compare(out, results)
    if as_json:
        _echo_json({"schema": 1, "runs": results})
    else:
        click.echo(report.format_compare(results))


def parse_value(text: str) -> Any:
    """A ``--set`` value as a TOML value (``1``, ``2.5``, ``"max"``, ``true``); a bare word
    is a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_set(text: str) -> tuple[str, list[Any]]:
    """``KEY=V1,V2,...`` as the key and its values; ``click.BadParameter`` if malformed."""
    key, sep, values = text.partition("=")
    if not sep or not key.strip() or not values.strip():
        raise click.BadParameter(f"{text!r} is not KEY=V1,V2,...", param_hint="--set")
    return key.strip(), [parse_value(v.strip()) for v in values.split(",")]


def _sets(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...],
          ) -> list[tuple[str, list[Any]]]:
    return [parse_set(v) for v in values]


@experiment.command()
@click.argument("policy", type=click.Path(dir_okay=False))
@click.option("--set", "sets", multiple=True, required=True, callback=_sets,
              metavar="KEY=V1,V2,...",
              help="A policy value by its path and the values to try; several make a grid.")
@workers_option
@scheduler_option
@json_option
@out_option
def sweep(policy: str, sets: list[tuple[str, list[Any]]], workers: int | None,
          scheduler: str | None, as_json: bool, out: str | None) -> None:
    """Run POLICY at every point of a grid of values (--set) and report each."""
    from ioasidsd.experiments import report
    from ioasidsd.experiments.errors import PolicyError

    base = _load(policy)
    keys = [k for k, _ in sets]
    points = [dict(zip(keys, combo, strict=True))
              for combo in itertools.product(*[vs for _, vs in sets])]
    checked = []
    for point in points:
        try:
            checked.append(base.with_settings(point))
        except PolicyError as exc:
            exc.file = exc.file or policy
            _reject(exc)
    results, _ = _run(checked, workers, scheduler)
    grid = [{"set": point, "results": result}
            for point, result in zip(points, results, strict=True)]
    if out is not None:
        report.write_sweep(out, grid)
    if as_json:
        _echo_json({"schema": 1, "grid": grid})
    else:
        click.echo(report.format_sweep(grid))


