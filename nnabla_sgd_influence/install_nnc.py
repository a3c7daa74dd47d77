"""``python -m nnabla_sgd_influence.install_nnc <NNC folder>``: the NNC installer's command
line (see :mod:`.plugin.install`)."""

import sys

from .plugin.install import main

if __name__ == "__main__":
    sys.exit(main())
