"""How good the estimates are, beside the stages (nnp -> data -> influence -> execution ->
plugin) and never on the plugins' path: leave-one-out ground truth, metrics, model variants.

* :mod:`.ground_truth`: retraining with one row's weight at 0 (the same retraining code as the
  trials, with per-row weights);
* :mod:`.metrics`: Kendall's tau and the Jaccard index of two rankings;
* :mod:`.agreement`: one trial's scores against leave-one-out (Hara et al. 2019, Table 1);
* :mod:`.variants`: the models the experiments start from (another solver, fresh weights).
"""
