"""Launched by tests/test_engine.py under `torchrun --nproc_per_node N` (or plain python for
N = 1): train a tiny model for one epoch, evaluate it, and write the results (rank 0) to the
JSON file given as argv[1], plus the trained weights as argv[1] + ".pt". The model is a
linear classifier (`linear_model`): it learns the tiny data in one epoch, so its predictions
are varied and a 1-vs-2-process comparison means something."""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import engine_data  # noqa: E402

from vitprune.train import engine  # noqa: E402
from vitprune.train.recipe import TrainConfig  # noqa: E402


def linear_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 28 * 28, 10))


def main(out: str) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    train_set, eval_set = engine_data.tensor_sets(train_per_class=8, eval_per_class=11)  # 110: not a multiple of 2 x batch
    model = linear_model()
    accelerator = engine.make_accelerator(seed=0, cpu=True)
    history = engine.train(model, train_set, TrainConfig(epochs=1, batch_size=16, lr=3e-3, progress=False),
                           accelerator=accelerator)
    result = engine.evaluate(model, eval_set, batch_size=16, accelerator=accelerator, progress=False)
    if accelerator.is_main_process:
        torch.save(model.state_dict(), out + ".pt")
        Path(out).write_text(json.dumps({"num_processes": accelerator.num_processes, "history": history,
                                         "top1": result["top1"], "top5": result["top5"],
                                         "num_samples": result["num_samples"],
                                         "confusion_matrix": result["confusion_matrix"]}))
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1])
