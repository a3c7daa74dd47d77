"""The NNC plugins: the last stage of nnp -> data -> influence -> execution -> plugin.

It takes a command line (NNC's dialog or a terminal) and gives the files of a run and its exit
code; and it installs the plugins into Neural Network Console.

* :mod:`.cli`: the two plugins' command lines and a process's whole life (one line, exit code);
* :mod:`.settings`: where a run reads and writes (its run settings), each with its help text;
* :mod:`.run`: one run: inputs and outputs checked before training, then scored and written;
* :mod:`.environment`: the Python, NNabla and packages a plugin needs, checked without imports;
* :mod:`.scripts`: the text of the plugin scripts (``plugins/*.py`` and NNC installs);
* :mod:`.install`: the plugins and this package copied into NNC's plugin folders, or removed.
"""
