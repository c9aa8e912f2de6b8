"""The examples run as documented (a few steps each, so that they cannot rot silently)."""
import os
import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_sequence_labelling_trains_tp_and_bp_on_packed_sequences():
    done = subprocess.run([sys.executable, str(EXAMPLES / "sequence_labelling.py"), "--steps", "5"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    rows = re.findall(r"^\s*(TP|BP) step\s+(\d+)\s+train loss ([\d.]+)\s+test accuracy per step ([\d.]+)%",
                      done.stdout, re.M)
    assert [(m, int(s)) for m, s, _, _ in rows] == [(m, s) for m in ("TP", "BP") for s in range(1, 6)]
    assert all(0 <= float(acc) <= 100 and float(loss) > 0 for _, _, loss, acc in rows)


def test_sequence_labelling_swaps_in_tplstm_for_torch_lstm():
    done = subprocess.run([sys.executable, str(EXAMPLES / "sequence_labelling.py"), "--steps", "5", "--cell", "lstm"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    rows = re.findall(r"^\s*(TP|BP) step\s+(\d+)\s+train loss ([\d.]+)\s+test accuracy per step ([\d.]+)%",
                      done.stdout, re.M)
    assert [(m, int(s)) for m, s, _, _ in rows] == [(m, s) for m in ("TP", "BP") for s in range(1, 6)]
    # the same seed gives both encoders the same initial weights and batches: the first step's loss agrees
    assert rows[0][2] == rows[5][2]
