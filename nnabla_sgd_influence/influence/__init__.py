"""SGD-Influence: the third stage of nnp -> data -> influence -> execution -> plugin.

It takes an :class:`~..nnp.model.NnpModel`, the training and validation datasets and the
:class:`~..arguments.InfluenceArguments`, and gives each training row's influence on the mean
validation loss, per trial and averaged (:class:`~.results.InfluenceResult`).

* :mod:`.parameters`: the trial's nnabla variables, put back after every temporary change;
* :mod:`.graphs`: the ``.nnp``'s networks as nnabla graphs (training, evaluation, second order);
* :mod:`.training`: the retraining, with the model's solver, recording every step;
* :mod:`.query`: u, the gradient of the mean validation loss;
* :mod:`.hvp`: Hessian-vector products and per-row dot products, one batched pass per step;
* :mod:`.second_order`: the layers that pass builds itself (equivalents, logits, CPU kernels);
* :mod:`.retrace`: the steps walked backwards, each row's influence accumulated;
* :mod:`.trials`: one trial, and every trial averaged;
* :mod:`.spread`: how sure each score is (its spread over the trials) and the summary's counts;
* :mod:`.results`: the scores in the training CSV's row order, the ranking and its writers.
"""
