"""Neural Network Console plugin: SGD Influence of every training row, tabular datasets.

Part of nnabla-sgd-influence. Runs from a checkout (python plugins/sgd_influence_tabular.py -h),
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
        from nnabla_sgd_influence.plugin.cli import run_tabular
    except Exception as error:  # no f-string: any Python 3 must get this far
        sys.stderr.write(
            "error: this plugin needs Python 3.8-3.10 with the nnabla-sgd-influence package "
            "beside it or installed ({}: {})\n".format(type(error).__name__, error)
        )
        sys.exit(1)
    sys.exit(run_tabular())
