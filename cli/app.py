"""The ``a5ocr`` command line (typer + rich). Installed as ``a5ocr.cli``.

Every user error (a bad argument, a missing or corrupt file) is one red line and exit code 2,
never a traceback; a run stopped by Ctrl-C or SIGTERM writes a checkpoint at the step it reached
and says what the checkpoint holds and how to resume (exit code 128 + the signal: 130, 143).
"""

from __future__ import annotations

import functools
import os
import signal
import sys

import typer

from a5ocr.cli.certify_range_cmd import certify_range
from a5ocr.cli.design_cmd import design
from a5ocr.cli.evaluate_cmd import evaluate
from a5ocr.cli.export_cmd import export
from a5ocr.cli.progress import console
from a5ocr.cli.reproduce_cmd import reproduce
from a5ocr.cli.robustify_cmd import robustify
from a5ocr.cli.scan_cmd import render_text, scan
from a5ocr.errors import A5Error
from a5ocr.training.interrupt import RunInterrupted

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="a5ocr: design printed characters that an OCR classifier reads correctly with a certificate (A5, CVPR 2023).",
)


@app.callback()
def _root(ctx: typer.Context) -> None:
    """a5ocr: certified robust printed characters (A5/P and A5/PC), image-side defences (A5/O, A5/R,
    A5/RC), evaluation, export and scanning."""
    # Runs before every command: under torchrun (WORLD_SIZE > 1) only design is allowed, so the
    # other commands stop here, before they write anything (one check for every command).
    if "WORLD_SIZE" in os.environ:
        from a5ocr.training.distributed import refuse_distributed  # local: torch, only under torchrun

        refuse_distributed(ctx.invoked_subcommand)


class _Interrupted(Exception):
    """A command's Ctrl-C (``err``, a ``KeyboardInterrupt``) carried past typer, which would turn it
    into a bare exit code 130 and drop what the run says about its checkpoint."""

    def __init__(self, err: KeyboardInterrupt):
        super().__init__(str(err))
        self.err = err


def _interruptible(command):
    """``command`` with its ``KeyboardInterrupt`` raised as ``_Interrupted`` (for ``main``)."""

    @functools.wraps(command)  # typer reads the options from the wrapped signature
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt as err:
            raise _Interrupted(err) from err

    return run


# One module per command.
app.command()(_interruptible(design))
app.command()(_interruptible(evaluate))
app.command()(_interruptible(reproduce))
app.command()(_interruptible(export))
app.command()(_interruptible(robustify))
app.command()(_interruptible(scan))
app.command(name="render-text")(_interruptible(render_text))
app.command(name="certify-range")(_interruptible(certify_range))


def main() -> None:
    """Console-script entry point: user errors become one line and exit code 2."""
    try:
        code = app(standalone_mode=False)  # returns the code of a typer.Exit raised inside
        sys.exit(code or 0)
    except A5Error as err:
        # soft_wrap: one line however long (a path in the message must not fold it at 80 columns)
        console.print(f"[bold red]error:[/] {_escape(str(err))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except _Interrupted as ex:
        _stopped(ex.err)
    except KeyboardInterrupt as err:  # outside a command (typer returns 130 for one while it parses)
        _stopped(err)
    except typer.Exit as ex:
        sys.exit(ex.exit_code)
    except typer.Abort:
        console.print("aborted")
        sys.exit(1)
    except Exception as err:
        # Usage errors of the (vendored) click layer (a bad option value, a missing argument):
        # one line too, naming the command's --help.
        if hasattr(err, "format_message") and hasattr(err, "exit_code"):
            ctx = getattr(err, "ctx", None)
            where = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
            console.print(f"[bold red]error:[/] {_escape(err.format_message())}{where}", highlight=False, soft_wrap=True)
            sys.exit(2)
        raise


def _stopped(err: KeyboardInterrupt) -> None:
    """Ctrl-C or SIGTERM: one line (``_interrupted``), exit 128 + the signal (the shell's code of a
    death by it: 130 for SIGINT, 143 for SIGTERM)."""
    said = _interrupted(err, sys.argv[1:2])
    # soft_wrap: one line, as the errors' (the folder's path is in it)
    console.print("[yellow]interrupted[/]" + (f": {_escape(said)}" if said else ""), highlight=False, soft_wrap=True)
    sys.exit(128 + int(getattr(err, "signum", signal.SIGINT)))


def _interrupted(err: KeyboardInterrupt, command: list[str]) -> str:
    """What a Ctrl-C or SIGTERM left: a training run's ``RunInterrupted`` says what its checkpoint
    holds, and this adds how to go on with ``command`` (``reproduce`` resumes by itself, ``design``
    and ``robustify`` with ``--resume``); anything else stopped outside a training run ("": nothing
    to add)."""
    if not isinstance(err, RunInterrupted):
        return ""
    again = "run the same command again" if command == ["reproduce"] else "run the same command with --resume"
    if err.resumable:
        return f"{err.message}; {again} to continue from it"
    start_over = "run the same command again" if command == ["reproduce"] else "run the command again without --resume"
    return f"{err.message}; {start_over} to start over"


def _escape(text: str) -> str:
    """``text`` with rich markup brackets escaped and its lines joined (one line)."""
    from rich.markup import escape  # local: only on the error path

    return escape(" ".join(text.split()))


if __name__ == "__main__":
    main()
