"""Layouts, fingerprints, and the numpy and torch adapters."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gossipfl.errors import GossipflError
from gossipfl.model import (
    Layout,
    LayoutError,
    ModelAdapter,
    NumpyAdapter,
    TensorSpec,
    compare_layouts,
)

UNPRINTABLE = ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs")


def test_layout_text_and_fingerprint_are_canonical() -> None:
    layout = Layout.of(
        [("fc.weight", "float32", (64, 10)), ("fc.bias", "float32", (10,)), ("n", "int64", ())]
    )
    assert layout.text == "fc.weight float32 [64,10]\nfc.bias float32 [10]\nn int64 []\n"
    assert Layout.from_text(layout.text) == layout
    assert len(layout.fingerprint) == 32
    assert layout.num_params == 650
    assert layout.slices == ((0, 0, 640), (1, 640, 10))
    other = Layout.of([("fc.weight", "float32", (64, 10)), ("fc.bias", "float32", (10,))])
    assert other.fingerprint != layout.fingerprint  # integer tensors count too
    assert Layout(()).text == ""
    assert Layout.from_text("") == Layout(())


def test_a_layout_text_is_parsed_once_and_a_bad_one_refused_every_time() -> None:
    """Every Hello carries its sender's layout text, the same from every neighbour:
    parsing is remembered (a Layout is immutable), failures are not, and the bound on
    tensors is part of what is remembered."""
    text = "w float32 [3,7]\nb float32 [7]\n"
    first = Layout.from_text(text)
    assert Layout.from_text(text) is first
    assert first == Layout.of([("w", "float32", (3, 7)), ("b", "float32", (7,))])
    with pytest.raises(LayoutError, match="more than 1"):
        Layout.from_text(text, max_tensors=1)
    for _ in range(2):
        with pytest.raises(LayoutError, match="canonical"):
            Layout.from_text("w float32 [03]\n")

    class Text(str):
        pass

    assert Layout.from_text(Text(text)) == first  # parsed, not taken from the memory
    assert Layout.from_text(Text(text)) is not first


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        (("", "float32", ()), "non-empty"),
        (("a b", "float32", ()), "whitespace"),
        (("a\tb", "float32", ()), "whitespace"),
        (("x" * 257, "float32", ()), "longer"),
        (("w", "complex64", ()), "dtype"),
        (("w", "float32", (-1,)), "dimension"),
        (("w", "float32", (1 << 21, 1 << 21)), "2\\*\\*40"),
        (("w", "float32", (1,) * 9), "shape"),
    ],
)
def test_bad_tensor_specs(spec: tuple, match: str) -> None:
    with pytest.raises(LayoutError, match=match):
        TensorSpec(*spec)


def test_duplicate_names_are_refused() -> None:
    with pytest.raises(LayoutError, match="twice"):
        Layout.of([("w", "float32", (1,)), ("w", "float32", (2,))])
    assert issubclass(LayoutError, GossipflError)
    assert issubclass(LayoutError, ValueError)


@given(
    st.lists(
        st.tuples(
            st.text(st.characters(blacklist_categories=UNPRINTABLE), min_size=1, max_size=30),
            st.sampled_from(["float32", "float16", "int64", "bool", "bfloat16"]),
            st.lists(st.integers(0, 1000), max_size=4),
        ),
        max_size=10,
        unique_by=lambda t: t[0],
    )
)  # fmt: skip
def test_layout_text_roundtrip(entries: list) -> None:
    layout = Layout.of(entries)
    back = Layout.from_text(layout.text)
    assert back == layout
    assert back.fingerprint == layout.fingerprint
    assert compare_layouts(layout, back) is None


def test_compare_layouts_names_the_first_difference() -> None:
    a = Layout.of([("w", "float32", (3, 4)), ("b", "float32", (4,))])
    assert compare_layouts(a, a) is None
    b = Layout.of([("w", "float32", (3, 4)), ("b", "float32", (5,))])
    problem = compare_layouts(a, b)
    assert problem is not None
    assert "tensor #1 'b'" in problem
    assert "[4]" in problem
    assert "[5]" in problem


def digits_model() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "W": rng.standard_normal((64, 10)).astype(np.float32),
        "b": rng.standard_normal(10).astype(np.float32),
    }


def test_numpy_adapter_matches_the_documented_interface() -> None:
    arrays = digits_model()
    adapter = NumpyAdapter(arrays)
    assert isinstance(adapter, ModelAdapter)
    assert adapter.num_params == 650
    vec = adapter.get_flat()
    assert vec.dtype == np.float32
    assert vec.shape == (650,)
    np.testing.assert_array_equal(vec[:640], arrays["W"].ravel())
    adapter.set_flat(vec * 2)
    np.testing.assert_array_equal(arrays["W"].ravel(), vec[:640] * 2)  # written in place
    out = np.empty(650, np.float32)
    assert adapter.get_flat(out=out) is out
    assert adapter.arrays["b"] is arrays["b"]


def test_numpy_adapter_integer_tensors_stay_local_and_exact() -> None:
    counter = np.array(2**40 + 1, dtype=np.int64)  # not representable in float32
    arrays = {"w": np.ones(3, np.float64), "steps": counter, "h": np.ones(2, np.float16)}
    adapter = NumpyAdapter(arrays)
    assert adapter.num_params == 5
    for _ in range(3):
        adapter.set_flat(adapter.get_flat() + 0.5)
    assert int(arrays["steps"]) == 2**40 + 1
    np.testing.assert_array_equal(arrays["w"], [2.5] * 3)
    assert arrays["h"].dtype == np.float16


@given(
    hnp.arrays(np.float32, (7,), elements=st.floats(-1e6, 1e6, width=32)),
)
def test_numpy_adapter_roundtrip_is_exact_for_float32(vec: np.ndarray) -> None:
    adapter = NumpyAdapter({"a": np.zeros((2, 2), np.float32), "b": np.zeros(3, np.float32)})
    adapter.set_flat(vec)
    np.testing.assert_array_equal(adapter.get_flat(), vec)


def test_numpy_adapter_refusals() -> None:
    readonly = np.zeros(3, np.float32)
    readonly.flags.writeable = False
    for arrays, match in [
        ({"a": [1.0]}, "ndarray"),
        ({"a": np.zeros(2, np.complex64)}, "dtype"),
        ({"a": np.zeros(2, object)}, "dtype"),
        ({"a": readonly}, "read-only"),
        ({"a b": np.zeros(2)}, "whitespace"),
    ]:
        with pytest.raises(LayoutError, match=match):
            NumpyAdapter(arrays)  # type: ignore[arg-type]
    adapter = NumpyAdapter(digits_model())
    for bad, match in [
        (np.zeros(649, np.float32), "shape"),
        (np.zeros((650, 1), np.float32), "shape"),
        (np.zeros(650, np.int32), "floating"),
        ([0.0] * 650, "numpy"),
    ]:
        with pytest.raises(LayoutError, match=match):
            adapter.set_flat(bad)  # type: ignore[arg-type]
    with pytest.raises(LayoutError, match="out"):
        adapter.get_flat(out=np.empty(650, np.float64))  # type: ignore[arg-type]


def test_model_and_wire_import_without_torch() -> None:
    script = textwrap.dedent(
        """
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked for this test")
        sys.meta_path.insert(0, Block())
        import numpy as np
        from gossipfl import wire
        from gossipfl.model import NumpyAdapter, TorchAdapter, LayoutError
        adapter = NumpyAdapter({"w": np.ones(3, np.float32)})
        data = wire.encode(wire.Update(sender="p", round=0, vector=adapter.get_flat()))
        assert wire.decode(data).vector.sum() == 3
        assert "torch" not in sys.modules
        try:
            TorchAdapter(object())
        except LayoutError as exc:
            assert "pip install" in str(exc)
        else:
            raise AssertionError("TorchAdapter worked without torch")
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_tensors_that_are_views_of_one_buffer_are_copied_in_one_go_to_the_same_values() -> None:
    """An adapter over consecutive views of one float32 buffer (as the numpy learner keeps
    its tensors) reads and writes that buffer whole; the values are those of an adapter
    over separate arrays, ``out=`` included; pickled, the arrays part ways and the copy
    falls back to tensor by tensor."""
    import pickle

    rng = np.random.default_rng(5)
    flat = rng.normal(size=23).astype(np.float32)
    views = {"w": flat[:20].reshape(4, 5), "b": flat[20:]}
    shared = NumpyAdapter(views)
    apart = NumpyAdapter({k: v.copy() for k, v in views.items()})
    assert shared._flat is flat
    assert apart._flat is None
    np.testing.assert_array_equal(shared.get_flat(), apart.get_flat())
    assert shared.get_flat() is not flat  # a copy, not the model itself
    out = np.empty(23, np.float32)
    assert shared.get_flat(out) is out
    np.testing.assert_array_equal(out, flat)
    incoming = rng.normal(size=23)  # float64: cast as the per-tensor path casts
    shared.set_flat(incoming)
    apart.set_flat(incoming)
    np.testing.assert_array_equal(views["w"], apart.arrays["w"])
    np.testing.assert_array_equal(views["b"], apart.arrays["b"])
    with pytest.raises(LayoutError):
        shared.set_flat(np.zeros(22))
    copy = pickle.loads(pickle.dumps(shared))
    assert copy._flat is None
    copy.set_flat(np.ones(23, np.float32))
    np.testing.assert_array_equal(copy.arrays["b"], np.ones(3, np.float32))
    np.testing.assert_array_equal(shared.get_flat(), apart.get_flat())  # the original: as was
    # views in another order, of part of a buffer, or of float64: tensor by tensor
    assert NumpyAdapter({"b": flat[20:], "w": flat[:20].reshape(4, 5)})._flat is None
    assert NumpyAdapter({"w": flat[:20].reshape(4, 5), "b": flat[20:22]})._flat is None
    wide = np.zeros(23)
    assert NumpyAdapter({"w": wide[:20].reshape(4, 5), "b": wide[20:]})._flat is None


@pytest.mark.parametrize(
    ("momentum", "weight_decay", "steps", "batch"),
    [(0.9, 0.0, 1, 32), (0.0, 0.0, 2, 4), (0.5, 0.01, 1, 64)],
)
def test_the_numpy_learner_steps_on_its_flat_buffer_as_tensor_by_tensor(
    momentum: float, weight_decay: float, steps: int, batch: int
) -> None:
    """The numpy learner keeps its tensors, velocities and gradients as views of flat
    buffers and steps them whole; a pickled copy (its views parted) steps tensor by
    tensor. Both must give the same model, bit for bit."""
    import pickle

    from gossipfl.learning import LearnerConfig
    from gossipfl.learning.numpy_models import NumpySoftmaxLearner

    rng = np.random.default_rng(11)
    x = rng.normal(size=(40, 6)).astype(np.float32)
    y = rng.integers(0, 3, size=40)
    cfg = LearnerConfig(
        lr=0.1, momentum=momentum, weight_decay=weight_decay, batch_size=batch, local_steps=steps
    )
    learner = NumpySoftmaxLearner(cfg, x, y, 3, seed=4)
    assert learner.adapter._flat is not None
    twin = pickle.loads(pickle.dumps(learner))
    assert twin.adapter._flat is None
    assert twin._flat is None
    for round in range(4):
        assert learner.train(round) == twin.train(round)
        np.testing.assert_array_equal(learner.adapter.get_flat(), twin.adapter.get_flat())
        shift = rng.normal(size=learner.adapter.num_params).astype(np.float32) * 0.01
        learner.adapter.set_flat(learner.adapter.get_flat() + shift)
        twin.adapter.set_flat(twin.adapter.get_flat() + shift)
    assert learner.params["weight"].base is learner._flat  # still views after set_flat


def test_the_numpy_learner_finds_each_samples_own_class_in_the_flat_block() -> None:
    """With the whole set as its batch, the learner picks each sample's own class's
    log-probability (the loss) and subtracts one there (the gradient) through a flat
    index: the elements ``logp[arange(n), y]`` would pick, and a step equal to one
    taken with that two-array index."""
    from gossipfl.learning import LearnerConfig
    from gossipfl.learning.numpy_models import NumpySoftmaxLearner

    rng = np.random.default_rng(2)
    x = rng.normal(size=(7, 5)).astype(np.float32)
    y = rng.integers(0, 4, size=7)
    learner = NumpySoftmaxLearner(LearnerConfig(batch_size=32), x, y, 4, seed=1)
    logp = rng.normal(size=(7, 4)).astype(np.float32)
    np.testing.assert_array_equal(logp.reshape(-1)[learner._own_classes()], logp[np.arange(7), y])
    # the step through the flat index against one through the pair of index arrays
    sampled = NumpySoftmaxLearner(LearnerConfig(batch_size=32), x, y, 4, seed=1)
    sampled._y = y.copy()  # not the batch's own object: the two-array path
    sampled._batch = lambda: (x, y)  # type: ignore[method-assign]
    assert learner.train(0) == sampled.train(0)
    np.testing.assert_array_equal(learner.adapter.get_flat(), sampled.adapter.get_flat())
