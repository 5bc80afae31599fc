"""The ``foreshock`` command. Sub-commands live in their packages and load lazily, so
``foreshock --help`` imports neither onnxruntime nor scipy.

Errors: any :class:`ForeshockError` becomes one line on stderr plus a hint; exit 2 for usage
and config errors, 1 for operational failures. ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Any

import typer
from typer import _click as click  # typer >= 0.20 vendors its own click; use that one

# name -> (module, attribute, one-line help). Loaded only when the sub-command runs.
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": ("foreshock.demo", "app", "Run the whole system on this machine: broker, "
             "gateway, simulated machines, agents and a live view."),
    "agent": ("agent.cli", "app", "Device agent: run, replay a recording, status, rebaseline."),
    "gateway": ("gateway.cli", "app", "Gateway: ingest, store, fleet, export, deploy models."),
    "watch": ("gateway.watch", "app", "Live control-room view of a site in the terminal."),
    "sim": ("firmware_sim.cli", "app", "Simulated sensor nodes over serial, UDP, MQTT or file."),
    "model": ("models.cli", "app", "Build, quantize, export, evaluate, sign and verify models."),
    "device": ("agent.provision", "app", "Provision and check a device: keys, certificate, "
               "config, systemd unit."),
}


class LazyGroup(typer.core.TyperGroup):
    """A click group whose sub-commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*super().list_commands(ctx), *SUBCOMMANDS]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in SUBCOMMANDS:
            return super().get_command(ctx, cmd_name)
        module, attr, _ = SUBCOMMANDS[cmd_name]
        sub = getattr(importlib.import_module(module), attr)
        command = typer.main.get_command(sub) if isinstance(sub, typer.Typer) else sub
        command.name = cmd_name
        return command

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Plain click help: typer's rich help would import every sub-command to list it.
        self.format_usage(ctx, formatter)
        self.format_help_text(ctx, formatter)
        rows = [r for p in self.get_params(ctx) if (r := p.get_help_record(ctx))]
        with formatter.section("Options"):
            formatter.write_dl(rows)
        self.format_commands(ctx, formatter)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_) for name, (_, _, help_) in SUBCOMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


app = typer.Typer(
    cls=LazyGroup, no_args_is_help=True, add_completion=False,
    help="Foreshock: edge predictive maintenance for rotating machinery.",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from foreshock import __version__

        typer.echo(f"foreshock {__version__}")
        raise typer.Exit(0)


@app.callback()
def root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logs."),
    version: bool = typer.Option(False, "--version", help="Print the version and exit.",
                                 is_eager=True, callback=_print_version),
) -> None:
    """Foreshock: edge predictive maintenance for rotating machinery."""
    if debug:
        os.environ["FORESHOCK_DEBUG"] = "1"
    configure_logging(debug)


def configure_logging(debug: bool) -> None:
    """Plain lines for journald under systemd, with time on a terminal."""
    level = logging.DEBUG if debug else logging.INFO
    if os.environ.get("INVOCATION_ID") or os.environ.get("JOURNAL_STREAM"):
        fmt = "%(levelname)s %(name)s: %(message)s"
    else:
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr, force=True)
    for noisy in ("amqtt", "transitions", "asyncio", "websockets"):
        logging.getLogger(noisy).setLevel(logging.ERROR if not debug else logging.INFO)


def main(argv: list[str] | None = None) -> Any:
    """Console entry point: one line per error, tracebacks only with --debug."""
    from foreshock.errors import ForeshockError

    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        return app(args=args, prog_name="foreshock", standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except ForeshockError as exc:
        if debug:
            raise
        typer.echo(f"error: {exc}", err=True)
        if exc.hint:
            typer.echo(f"hint: {exc.hint}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # the last line of defence: no traceback for users
        if debug:
            raise
        typer.echo(f"error: {type(exc).__name__}: {exc}", err=True)
        typer.echo("hint: re-run with --debug for the traceback, and report it", err=True)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
