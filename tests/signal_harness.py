"""A stand-in for a plugin run, built from the safety pieces only, for the signal sweep.

It does what used to break under a signal: ``import nnabla`` (interrupted: a segmentation
fault at exit), second-order passes through BatchNormalization, whose backward runs Python
callbacks from nnabla's C++ (interrupted: ``SystemError ... returned a result with an
exception set``), files in the run's temporary folder, then a staged output. Usage:

    python signal_harness.py OUTPUT TEMP_PARENT [STEPS]

Exit 0 with OUTPUT written (last line ``end``), or 130/129 with one line ``interrupted``.
"""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nnabla_sgd_influence.runtime import signals, streams  # noqa: E402

streams.guard()
signals.install()


def main(output: Path, temp_parent: Path, steps: int) -> int:
    try:
        import numpy as np

        from nnabla_sgd_influence.data.datasets import load_dataset
        from nnabla_sgd_influence.influence.graphs import GraphCache
        from nnabla_sgd_influence.influence.hvp import AutodiffPass
        from nnabla_sgd_influence.influence.parameters import ParameterSet
        from nnabla_sgd_influence.nnp.model import load_model
        from nnabla_sgd_influence.runtime.staging import save_array, staged_outputs
        from nnabla_sgd_influence.runtime.workspace import workspace

        signals.checkpoint()
        samples = REPO / "samples" / "build"
        model = load_model(samples / "models" / "digits_cnn" / "results.nnp")
        train = load_dataset(samples / "digits" / "train.csv", model.data_variables)
        params = ParameterSet(model)
        step_pass = AutodiffPass(GraphCache(model, params))
        v = [np.ones(params[n].shape, np.float32) for n in model.trainable]
        with workspace(temp_parent) as folder:
            for step in signals.checkpoints(range(steps)):
                _, hv = step_pass(train.batch(np.arange(8 * step, 8 * step + 8)), v)
                save_array(folder / f"{step:04d}.npy", np.concatenate([h.ravel() for h in hv]))
        with staged_outputs() as outputs, outputs.text(output) as stream:
            for row in signals.checkpoints(range(20000)):
                stream.write(f"{row},{row * 0.5}\n")
            stream.write("end\n")
    except signals.Interrupted as interrupt:
        print("interrupted", file=sys.stderr)
        return interrupt.exit_code
    return 0


if __name__ == "__main__":
    code = main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]) if sys.argv[3:] else 6)
    signals.hold_until_exit()
    sys.exit(code)
