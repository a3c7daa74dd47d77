"""Command lines of the two plugins (image and tabular).

Neural Network Console builds a plugin's dialog from ``-h``: the first line of the description
is the menu title, and each option's help gives its type in parentheses and ``default=``.
Options hidden from the dialog use ``argparse.SUPPRESS`` and are documented in the README.
Every option is a field of the run's settings, generated from what the field says of itself
(its help text and :class:`..arguments.Flags`), so that nothing is written twice. Nothing
heavy is imported until the arguments are parsed, so ``-h`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from contextlib import suppress
from dataclasses import MISSING, Field, fields
from typing import Any, Dict, List, NoReturn, Optional, Sequence, Tuple

from ..arguments import ExecutionArguments, InfluenceArguments, settings_from
from ..errors import DEBUG_VARIABLE, InfluenceError, RunStopped, closing_line, one_line
from ..execution.mpi import launched
from ..nnp.compat import import_nnabla
from ..runtime import signals, streams
from ..runtime.limits import OPENBLAS_LOAD_BYTES, check_room
from ..runtime.progress import close_open_bars
from .environment import check_interpreter, check_packages, use_single_threaded_blas
from .scripts import KINDS
from .settings import RunSettings

_PAPERS = """
Ranks every row of the training dataset by its SGD-Influence on the validation loss:
rows with the most negative influence come first; removing them should lower the
validation loss, which makes them the first candidates for data cleansing.
Retrains the model of the .nnp from its saved parameters and solver, then retraces
the steps backwards.

"Data Cleansing for Models Trained with SGD"
  Satoshi Hara, Atsushi Nitanda, Takanori Maehara, NeurIPS 2019
  https://arxiv.org/abs/1906.08473
"Data Cleansing for Deep Neural Networks with Storage-efficient Approximation of
Influence Functions"
  Kenji Suzuki, Yoshiyuki Kobayashi, Takuya Narihira, 2021
  https://arxiv.org/abs/2103.11807
"""

# Menu titles (the description's first line), apart from Sony's "SGD Influence (all data)".
_TITLES = {
    "image": "SGD Influence (Hessian retrace)",
    "tabular": "SGD Influence tabular (Hessian retrace)",
}
_DESCRIPTIONS = {
    "image": "For image datasets (x:image, y:label).\n"
    "Output columns: x:image, y:label, influence, datasource_index, then influence_std\n"
    "(the spread over the trials) when there is more than one trial.",
    "tabular": "For tabular datasets (x__0, x__1, ..., y); models with Dropout are refused.\n"
    "Output columns: index, influence, datasource_index, then influence_std (the spread\n"
    "over the trials) when there is more than one trial, then the row's own columns.",
}
# The settings whose fields are the plugins' options, and the order of NNC's dialog (the
# other options are hidden from it).
SETTINGS = (RunSettings, InfluenceArguments, ExecutionArguments)
DIALOG = ("model", "batch_size", "input_train", "input_val", "output", "seed", "n_trials")
DIALOG += ("remove_top", "tile")


class _OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line, like every other error."""

    def error(self, message: str) -> NoReturn:
        report(f"error: {one_line(message)} (see --help)")
        self.exit(2)


def build_parser(kind: str) -> argparse.ArgumentParser:
    """The argument parser of the ``image`` or ``tabular`` plugin: an option for each field
    of the settings that the plugin takes (:class:`..arguments.Flags`)."""
    parser = _OneLineParser(
        description=f"{_TITLES[kind]}\n\n{_DESCRIPTIONS[kind]}\n{_PAPERS}",
        formatter_class=argparse.RawTextHelpFormatter,
    )
    for setting in plugin_options(kind):
        parser.add_argument(*setting.metadata["cli"].names, **_argument(setting, kind))
    return parser


def plugin_options(kind: str) -> List[Field]:
    """The fields that are options of the ``kind`` plugin: those of NNC's dialog in its
    order, then the hidden ones."""
    found = [
        setting
        for settings in SETTINGS
        for setting in fields(settings)
        if setting.metadata["cli"] and kind in (setting.metadata["cli"].plugins or KINDS)
    ]
    shown = [setting for setting in found if setting.metadata["cli"].dialog]
    shown.sort(key=lambda setting: DIALOG.index(setting.name))
    return shown + [setting for setting in found if not setting.metadata["cli"].dialog]


def _argument(setting: Field, kind: str) -> Dict[str, Any]:
    """``add_argument``'s keywords for ``setting`` in the ``kind`` plugin.

    NNC builds its dialog from the help: the text, the type in parentheses and ``default=``
    (none for a required option); a field without a dialog type is hidden.
    """
    cli = setting.metadata["cli"]
    default = cli.defaults.get(kind, setting.default)
    keywords: Dict[str, Any] = {"dest": setting.name}
    if isinstance(default, bool):
        keywords["action"] = "store_true"
    elif default is MISSING:
        keywords.update(type=cli.parse, required=True)
    else:
        keywords.update(type=cli.parse, default=default, choices=cli.choices)
    text = f"{setting.metadata['help']} ({cli.dialog})"
    if not cli.dialog:
        keywords["help"] = argparse.SUPPRESS
    elif default is MISSING:
        keywords["help"] = text
    else:
        keywords["help"] = f"{text} default={default}"
    return keywords


def settings_from_args(
    kind: str, args: argparse.Namespace
) -> Tuple[RunSettings, ExecutionArguments, InfluenceArguments]:
    """The run's settings for parsed arguments, each validated as it is made."""
    values = vars(args)
    return (
        settings_from(RunSettings, values, kind=kind),
        settings_from(ExecutionArguments, values),
        settings_from(InfluenceArguments, values),
    )


class _LogFormatter(logging.Formatter):
    """nnabla's log format, with this package's loggers shown under one short name; a run's
    closing error line (``extra={"bare": True}``) is shown as it is."""

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "bare", False):
            return record.getMessage()
        if record.name.startswith("nnabla_sgd_influence"):
            record = logging.makeLogRecord(record.__dict__)
            record.name = "sgd-influence"
        return super().format(record)


class _PluginHandler(logging.StreamHandler):
    """The stderr handler the plugins install (told apart from anyone else's)."""


def configure_logging(debug: bool) -> None:
    """INFO (DEBUG with NNSI_DEBUG) to stderr, in nnabla's format, before nnabla sets its own."""
    handler = _PluginHandler(sys.stderr)
    handler.setFormatter(_LogFormatter("%(asctime)s [%(name)s][%(levelname)s]: %(message)s"))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for noisy in ("matplotlib", "PIL", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def report(line: str) -> None:
    """Show a run's closing error line: through nnabla's logger, whose output NNC's log pane
    shows (and a log file of nnabla.conf keeps), as exactly ``line`` on stderr."""
    close_open_bars()
    if launched()[1] != 0:  # an MPI rank other than 0: rank 0 prints the run's line
        return
    try:
        if any(isinstance(h, _PluginHandler) for h in logging.getLogger().handlers):
            logging.getLogger("nnabla").error(line, extra={"bare": True})
        else:
            print(line, file=sys.stderr)
    except MemoryError:  # too little memory left even for a log record
        with suppress(OSError, MemoryError):
            os.write(2, f"{line}\n".encode("utf-8", "replace"))


def main(kind: str, argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv``, run the plugin and turn every outcome into an exit code."""
    debug = os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")
    configure_logging(debug)
    job = _join_mpi_job()
    if job is None and launched()[0] > 1 and launched()[1] != 0:
        return 0  # mpirun without mpi4py: rank 0 does the whole run (and says so)
    try:
        check_interpreter()  # even for -h: see environment.py
    except InfluenceError as error:
        return _stop(error, job, debug)
    args = build_parser(kind).parse_args(argv)
    try:
        check_packages()
        signals.checkpoint()
        check_room(OPENBLAS_LOAD_BYTES, "load numpy")  # an import that can hang
        import_nnabla()  # a numpy that does not fit the installed nnabla, explained
        from .run import run

        signals.checkpoint()  # a signal during the import of nnabla is acted on here
        run(*settings_from_args(kind, args))
    except (Exception, KeyboardInterrupt) as error:
        return _stop(error, job, debug)
    return 0


def _stop(error: BaseException, job, debug: bool) -> int:
    """Report the line that ``error`` closes the run with; its exit code.

    Under MPI (``job``, a :class:`..execution.mpi.World`) the ranks agree on one line: that of the
    rank where the run stopped, which rank 0 prints.
    """
    if debug and not isinstance(error, (KeyboardInterrupt, RunStopped)):
        traceback.print_exc()
    line, code = closing_line(error) if job is None else job.settle(error)
    report(line)
    return code


def _join_mpi_job():
    """This process's :class:`..execution.mpi.World` under ``mpirun`` with mpi4py, else None.

    Every rank joins first, before anything can fail: a rank that stops then waits in
    ``MPI_Finalize`` until every rank gets there, so the launcher never ends rank 0 before
    it printed the run's line (Open MPI ends every rank a quarter of a second after one
    exits with an error).
    """
    if launched()[0] <= 1:
        return None
    from ..execution.mpi import world

    return world()


def main_image(argv: Optional[List[str]] = None) -> int:
    """Entry point of the image plugin (``plugins/sgd_influence.py``)."""
    return main("image", argv)


def main_tabular(argv: Optional[List[str]] = None) -> int:
    """Entry point of the tabular plugin (``plugins/sgd_influence_tabular.py``)."""
    return main("tabular", argv)


def run_process(kind: str, argv: Optional[List[str]] = None) -> int:
    """:func:`main` as the whole life of a process (the plugin scripts, the console scripts).

    Streams and signal handling are set first (the plugin scripts have set them already,
    before anything slow), then OpenBLAS's threads (none), and a late signal cannot turn the
    exit code into a death by signal while the interpreter shuts down. Not for a process that
    goes on working: tests and notebooks call :func:`main`, which changes nothing process-wide.
    """
    streams.guard()
    signals.install()
    use_single_threaded_blas()  # before numpy loads (see environment.py)
    code = main(kind, argv)
    signals.hold_until_exit()
    return code


def run_image(argv: Optional[List[str]] = None) -> int:
    """The image plugin as a process (``plugins/sgd_influence.py``)."""
    return run_process("image", argv)


def run_tabular(argv: Optional[List[str]] = None) -> int:
    """The tabular plugin as a process (``plugins/sgd_influence_tabular.py``)."""
    return run_process("tabular", argv)
