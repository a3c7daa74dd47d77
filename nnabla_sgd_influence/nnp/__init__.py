"""The model: the first stage of nnp -> data -> influence -> execution -> plugin.

It takes an NNC ``.nnp`` file and gives an :class:`~.model.NnpModel`: plain data (networks,
data variables, loss, parameters, solver) from which the later stages build nnabla graphs.

* :mod:`.archive`: the zip and its members, every size checked before anything is read;
* :mod:`.model`: what the optimizer section names (networks, inputs, loss, trained parameters);
* :mod:`.solvers`: the solver, read, built in nnabla, scheduled and linearized for the retrace;
* :mod:`.compat`: what differs between the nnabla (and Pillow) releases supported.
"""
