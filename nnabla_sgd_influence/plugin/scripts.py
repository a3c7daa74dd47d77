"""The text of the two plugin scripts, one source for ``plugins/`` and for NNC installs.

``plugins/sgd_influence.py`` and ``plugins/sgd_influence_tabular.py`` are this text (a test
checks it), and :mod:`.install` writes the same text into Neural Network Console under
names of its own. A script finds the package beside itself (an NNC install) or one folder up
(a checkout) before an installed copy, and is written for any Python 3 so that a wrong Python
or a missing NNabla gets one line, not a traceback, even for ``-h``.
"""

from __future__ import annotations

from typing import Dict

KINDS = ("image", "tabular")
CHECKOUT_NAMES = {"image": "sgd_influence.py", "tabular": "sgd_influence_tabular.py"}
# Names in NNC's plugin folders: unlike Sony's SGD_influence.py and sgd_influence_tabular.py
# in every letter case.
INSTALLED_NAMES = {
    "image": "sgd_influence_retrace.py",
    "tabular": "sgd_influence_retrace_tabular.py",
}

_SUMMARIES: Dict[str, str] = {"image": "image datasets", "tabular": "tabular datasets"}

_TEMPLATE = '''"""Neural Network Console plugin: SGD Influence of every training row, {summary}.

Part of nnabla-sgd-influence. Runs from a checkout (python plugins/{checkout} -h),
from NNC's plugin folder, where the installer puts the package beside this script, or with
the package installed.
"""

import os
import sys


def _find_package():
    here = os.path.dirname(os.path.abspath(__file__))
    for folder in (here, os.path.dirname(here)):
        if os.path.isfile(os.path.join(folder, "nnabla_sgd_influence", "__init__.py")):
            if folder not in sys.path:
                sys.path.insert(0, folder)
            return


if __name__ == "__main__":
    _find_package()
    try:
        from nnabla_sgd_influence.runtime import signals, streams

        streams.guard()  # a closed or failing stderr can never stop the run
        signals.install()  # from here on Ctrl-C, SIGTERM and SIGHUP stop it at a safe point
        from nnabla_sgd_influence.plugin.cli import {entry}
    except Exception as error:  # no f-string: any Python 3 must get this far
        sys.stderr.write(
            "error: this plugin needs Python 3.8-3.10 with the nnabla-sgd-influence package "
            "beside it or installed ({{}}: {{}})\\n".format(type(error).__name__, error)
        )
        sys.exit(1)
    sys.exit({entry}())
'''


def script_text(kind: str) -> str:
    """The plugin script of ``kind`` ("image" or "tabular")."""
    return _TEMPLATE.format(
        summary=_SUMMARIES[kind],
        checkout=CHECKOUT_NAMES[kind],
        entry="run_image" if kind == "image" else "run_tabular",
    )
