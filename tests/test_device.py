import pytest
import torch

from embergpt.device import autocast, resolve_device, resolve_dtype
from embergpt.errors import DeviceError


def test_explicit_and_env(monkeypatch):
    monkeypatch.delenv("EMBERGPT_DEVICE", raising=False)
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("EMBERGPT_DEVICE", "cpu")
    assert resolve_device(None) == torch.device("cpu")


def test_auto_prefers_accelerators(monkeypatch):
    monkeypatch.delenv("EMBERGPT_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert resolve_device(None).type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_missing_device_is_one_line_error():
    with pytest.raises(DeviceError, match="CUDA is not available") as e:
        resolve_device("cuda:0")
    assert "\n" not in str(e.value)
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device("tpu")


def test_dtypes():
    assert resolve_dtype(None, "cpu") == torch.float32
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    with pytest.raises(DeviceError, match="unknown dtype"):
        resolve_dtype("int8", "cpu")
    with pytest.raises(DeviceError, match="float16"):
        resolve_dtype("float16", "cpu")


def test_autocast_bf16_on_cpu():
    a = torch.randn(4, 4)
    with autocast("cpu", torch.bfloat16):
        assert (a @ a).dtype == torch.bfloat16
    with autocast("cpu", torch.float32):
        assert (a @ a).dtype == torch.float32
