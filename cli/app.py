"""The ``a5ocr`` command line (typer + rich). Installed as ``a5ocr.cli``.

Every user error (a bad argument, a missing or corrupt file) is one red line and exit code 2,
never a traceback; an interrupted run leaves its last checkpoint and says how to resume.
"""

from __future__ import annotations

import os
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


# One module per command.
app.command()(design)
app.command()(evaluate)
app.command()(reproduce)
app.command()(export)
app.command()(robustify)
app.command()(scan)
app.command(name="render-text")(render_text)
app.command(name="certify-range")(certify_range)


def main() -> None:
    """Console-script entry point: user errors become one line and exit code 2."""
    try:
        code = app(standalone_mode=False)  # returns the code of a typer.Exit raised inside
        sys.exit(code or 0)
    except A5Error as err:
        # soft_wrap: one line however long (a path in the message must not fold it at 80 columns)
        console.print(f"[bold red]error:[/] {_escape(str(err))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: the last checkpoint is intact; run again with --resume to continue")
        sys.exit(130)
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


def _escape(text: str) -> str:
    """``text`` with rich markup brackets escaped and its lines joined (one line)."""
    from rich.markup import escape  # local: only on the error path

    return escape(" ".join(text.split()))


if __name__ == "__main__":
    main()
