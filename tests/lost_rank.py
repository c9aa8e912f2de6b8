"""``targetprop`` under torchrun with one process lost: the process of rank ``$LOST_RANK`` kills
itself (SIGKILL, no chance to clean up) when it reaches the training step ``$LOST_AT``.

    torchrun --nproc-per-node 2 tests/lost_rank.py train ...   (run by test_ddp_trainer.py through processes.torchrun)
"""
import os
import signal
import sys

from targetprop import cli
from targetprop.training.trainer import Trainer

if os.environ.get("RANK") == os.environ["LOST_RANK"]:
    step, at = Trainer.step, int(os.environ["LOST_AT"])

    def dying_step(self, iteration):
        if iteration == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return step(self, iteration)

    Trainer.step = dying_step

sys.exit(cli.main(sys.argv[1:]))
