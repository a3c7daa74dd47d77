"""What keeps a run safe, underneath every stage of nnp -> data -> influence -> execution ->
plugin: signals, outputs, temporary files, system errors and limits, streams and progress.

* :mod:`.signals`: Ctrl-C, SIGTERM and SIGHUP recorded at once, acted on at checkpoints;
* :mod:`.staging`: outputs written beside their destinations and renamed into place together;
* :mod:`.output_paths`: what a run may write to, checked against every file it reads;
* :mod:`.workspace`: the run's one temporary folder, removed however the run ends;
* :mod:`.oserrors`: a full disk, a quota or a long name as one line naming the path;
* :mod:`.limits`: the machine's memory, checked before the work that would exhaust it;
* :mod:`.streams`: standard streams that may fail or be closed without stopping the run;
* :mod:`.progress`: progress shown as bars, reported to a callback, or not at all.
"""
