"""The networks' precision is chosen per predict call: the reference's unless asked otherwise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bids_app.nnunet.model import NnUNetModel, bf16_native, cpu_bf16_native, precision_context


@pytest.fixture(scope="module")
def step1(tiny_models):
    return NnUNetModel.load(tiny_models["step1"], torch.device("cpu"), threads=1)


def test_fp32_is_the_cpu_reference_bit_for_bit_and_bf16_differs_without_leaking(step1, image_maker):
    image = image_maker(1, shape=(40, 36, 30), seed=5)
    reference, ref_probs = step1.predict(image, return_probabilities=True)
    fp32, fp32_probs = step1.predict(image, return_probabilities=True, precision="fp32")
    np.testing.assert_array_equal(fp32_probs, ref_probs)  # auto on CPU is float32
    np.testing.assert_array_equal(fp32, reference)
    bf16, bf16_probs = step1.predict(image, return_probabilities=True, precision="bf16")
    assert bf16_probs is not None and ref_probs is not None
    assert bf16_probs.dtype == np.float32 and bf16.shape == reference.shape
    assert not np.array_equal(bf16_probs, ref_probs)  # the arithmetic really changed
    assert np.abs(bf16_probs - ref_probs).mean() < 0.01  # but only by rounding
    again, again_probs = step1.predict(image, return_probabilities=True)
    np.testing.assert_array_equal(again_probs, ref_probs)
    np.testing.assert_array_equal(again, reference)


def test_unknown_precision_is_a_one_line_error(step1, image_maker):
    with pytest.raises(ValueError, match="precision must be auto, fp32 or bf16, got 'fp16'"):
        step1.predict(image_maker(1, shape=(40, 36, 30)), precision="fp16")


@pytest.mark.parametrize(
    ("flags", "native"),
    [
        ("flags\t\t: fpu sse avx2 avx512f avx512_bf16\n", True),  # Cooper Lake, Zen 4
        ("flags\t\t: fpu avx512f amx_bf16 amx_tile\n", True),  # Sapphire Rapids
        ("Features\t: fp asimd sve bf16\n", True),  # Arm (Graviton 3, Neoverse V1)
        ("flags\t\t: fpu sse avx2 avx512f avx512bw\n", False),  # Skylake: emulated
        ("Features\t: fp asimd\n", False),
    ],
)
def test_native_bfloat16_is_read_from_the_cpu_flags(tmp_path, flags, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\n" + flags)
    assert cpu_bf16_native(cpuinfo) is native


def test_unknown_cpu_counts_as_not_native(tmp_path):
    assert cpu_bf16_native(tmp_path / "missing") is False
    assert bf16_native(torch.device("meta")) is False


def test_contexts_select_the_dtype_of_a_matmul():
    a = torch.ones(4, 4)
    with precision_context("bf16", torch.device("cpu")):
        assert (a @ a).dtype == torch.bfloat16
    with (
        torch.autocast("cpu", dtype=torch.bfloat16),
        precision_context("fp32", torch.device("cpu")),
    ):
        assert (a @ a).dtype == torch.float32  # fp32 wins over an enclosing autocast
    with precision_context("auto", torch.device("cpu")):
        assert (a @ a).dtype == torch.float32


def test_this_machine_flags_agree_with_proc_cpuinfo():
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    assert cpu_bf16_native() is any(f in text.split() for f in ("avx512_bf16", "amx_bf16", "bf16"))
