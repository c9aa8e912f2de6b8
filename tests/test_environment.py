"""The conditions a run records: threads, versions, the CPU's model and vector extensions, device."""
import platform

import torch

from targetprop.training import environment

CPUINFO = """processor\t: 0
model name\t: Example CPU 9000 @ 3.0GHz
flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512bw
processor\t: 1
model name\t: Example CPU 9000 @ 3.0GHz
"""


def test_cpu_model_and_flags_from_cpuinfo(tmp_path, monkeypatch):
    (tmp_path / "cpuinfo").write_text(CPUINFO)
    monkeypatch.setattr(environment, "CPUINFO", tmp_path / "cpuinfo")
    assert environment.cpu_model() == "Example CPU 9000 @ 3.0GHz"
    assert environment.cpu_flags() == ["sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw"]
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nFeatures\t: fp asimd sve\n")  # ARM spells them so
    assert environment.cpu_flags() == ["asimd", "sve"]
    monkeypatch.setattr(environment, "CPUINFO", tmp_path / "missing")
    assert environment.cpu_flags() == [] and environment.cpu_model() == (platform.processor() or platform.machine())


def test_describe_records_threads_versions_and_device():
    torch.set_num_threads(3)  # the conftest fixture restores one thread after the test
    described = environment.describe()
    assert described["threads"] == 3 and described["torch"] == torch.__version__
    assert described["python"] == platform.python_version() and described["device"] == "cpu"
    assert set(described) == {"threads", "torch", "python", "platform", "cpu", "cpu_flags", "device", "world_size"}
    assert described["world_size"] == 1 and environment.describe(torch.device("cpu"), 4)["world_size"] == 4
    assert environment.describe(torch.device("cpu"))["device"] == "cpu"
