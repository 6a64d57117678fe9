"""analysis.runtime: execution-provider choice."""

from __future__ import annotations

import pytest

from analysis.runtime import choose_providers


def test_cuda_first_when_present() -> None:
    both = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(both, "auto") == both
    assert choose_providers(["CPUExecutionProvider"], "auto") == ["CPUExecutionProvider"]
    assert choose_providers(both, "cpu") == ["CPUExecutionProvider"]


def test_forcing_cuda_without_it_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="no CUDA provider"):
        choose_providers(["CPUExecutionProvider"], "cuda")
    with pytest.raises(ValueError, match="auto, cpu or cuda"):
        choose_providers(["CPUExecutionProvider"], "tpu")


def test_tensorrt_ahead_of_cuda_when_present() -> None:
    all3 = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(all3, "auto") == all3
    assert choose_providers(all3, "cuda") == all3
    assert choose_providers(all3, "cpu") == ["CPUExecutionProvider"]
    # TensorRT without CUDA is not a usable GPU set-up: CPU.
    assert choose_providers(["TensorrtExecutionProvider", "CPUExecutionProvider"], "auto") == ["CPUExecutionProvider"]
