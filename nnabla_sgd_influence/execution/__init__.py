"""Where the trials run: the fourth stage of nnp -> data -> influence -> execution -> plugin.

It takes the model, the datasets and the settings of a run, and gives the trials' results in
trial order, in one process, whatever the device, the worker processes or the MPI ranks: the
scores are the same bytes however the work was spread.

* :mod:`.device`: the compute context, CPU or cuDNN (``--context``, or NNC's ``net.nntxt``);
* :mod:`.workers`: the trials in local worker processes, with signals and deaths handled;
* :mod:`.mpi`: the trials, or each step's batch, split over MPI ranks that stop together.
* :mod:`.runner`: the :class:`~.runner.Execution` chosen once, and every trial run on it.
"""
