"""Measuring the engine, apart from it: ground truth, metrics and model variants.

Nothing here is on the plugins' path. :mod:`.ground_truth` retrains with a row left out (the
same retraining code as the engine, with per-row weights), :mod:`.metrics` compares rankings,
:mod:`.agreement` puts both together (Hara et al. 2019, Table 1) and :mod:`.variants` makes the
models the experiments start from.
"""
