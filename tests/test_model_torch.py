"""The torch adapter (skipped where torch is not installed)."""

from __future__ import annotations

import numpy as np
import pytest

from gossipfl.model import LayoutError, NumpyAdapter, TorchAdapter

torch = pytest.importorskip("torch")


class Net(torch.nn.Module):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4, 3)
        self.register_buffer("mask", torch.ones(3, dtype=torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.conv(x)).mean(dim=(2, 3)))


def test_torch_adapter_follows_state_dict_order_and_keeps_integer_buffers() -> None:
    torch.manual_seed(0)
    net = Net()
    net.train()
    for _ in range(3):
        net(torch.randn(2, 1, 5, 5))
    net.bn.num_batches_tracked.fill_(2**40 + 1)
    adapter = TorchAdapter(net)
    names = [spec.name for spec in adapter.layout.tensors]
    assert names == list(net.state_dict().keys())
    assert adapter.layout.tensors[names.index("bn.num_batches_tracked")].dtype == "int64"
    assert adapter.layout.tensors[names.index("mask")].dtype == "bool"
    float_count = sum(t.numel() for t in net.state_dict().values() if t.is_floating_point())
    assert adapter.num_params == float_count
    vec = adapter.get_flat()
    assert vec.dtype == np.float32
    np.testing.assert_array_equal(vec[:36], net.conv.weight.detach().numpy().ravel())
    adapter.set_flat(vec + 1)
    np.testing.assert_allclose(adapter.get_flat(), vec + 1)
    assert int(net.bn.num_batches_tracked) == 2**40 + 1  # untouched, exact
    assert bool(net.mask.all())
    assert net.conv.weight.requires_grad  # still a trainable parameter


def test_torch_adapter_accepts_read_only_vectors_and_low_precision_params() -> None:
    net = torch.nn.Linear(3, 2).to(torch.bfloat16)
    adapter = TorchAdapter(net)
    assert adapter.layout.tensors[0].dtype == "bfloat16"
    vec = np.arange(adapter.num_params, dtype=np.float32)
    vec.flags.writeable = False  # as decoded from the wire
    adapter.set_flat(vec)
    np.testing.assert_array_equal(adapter.get_flat(), vec)  # small ints are exact in bf16


class Mixed(torch.nn.Module):  # type: ignore[misc]
    """float32 tensors (one a non-contiguous view) between float64 and float16 ones."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.arange(12, dtype=torch.float32).reshape(3, 4).t())
        self.register_buffer("b", torch.linspace(-1, 1, 5, dtype=torch.float64))
        self.c = torch.nn.Parameter(torch.arange(6, dtype=torch.float32) * 0.5)
        self.register_buffer("d", torch.full((2,), 3.0, dtype=torch.float16))


def test_torch_adapter_reads_every_dtype_and_view_in_state_dict_order() -> None:
    # float32 tensors are copied by numpy, others converted by torch: one vector, in order.
    net = Mixed()
    assert not net.a.is_contiguous()
    want = np.concatenate(
        [t.detach().to(torch.float32).reshape(-1).numpy() for t in net.state_dict().values()]
    )
    adapter = TorchAdapter(net)
    np.testing.assert_array_equal(adapter.get_flat(), want)
    out = np.full(adapter.num_params, np.nan, dtype=np.float32)
    assert adapter.get_flat(out=out) is out
    np.testing.assert_array_equal(out, want)
    adapter.set_flat(want * 2)
    np.testing.assert_array_equal(adapter.get_flat(), want * 2)


def test_torch_and_numpy_adapters_agree_on_layouts() -> None:
    net = torch.nn.Linear(64, 10)
    state = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
    assert TorchAdapter(net).layout == NumpyAdapter(state).layout


def test_torch_adapter_detects_a_changed_module() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(3, 2))
    adapter = TorchAdapter(net)
    net[0] = torch.nn.Linear(3, 4)
    with pytest.raises(LayoutError, match="changed"):
        adapter.get_flat()
    with pytest.raises(LayoutError, match="Module"):
        TorchAdapter("not a module")  # type: ignore[arg-type]
