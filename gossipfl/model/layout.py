"""The layout of a model: which tensors, in which order, with which shapes and dtypes.

Two peers can only average their models if they agree on the layout, so a peer sends
its layout in the handshake and refuses a neighbour whose layout differs. The layout has
one canonical text form, one line per tensor::

    fc.weight float32 [64,10]
    fc.bias float32 [10]
    bn.num_batches_tracked int64 []

and its *fingerprint* is the BLAKE2b-256 digest of that text (UTF-8). The text form is
what travels in the handshake: it is compact, trivially written by a peer in another
language, and it lets a mismatch name the first tensor that differs instead of saying
"fingerprints differ".

Which tensors are carried in the flat vector
--------------------------------------------
Every tensor appears in the layout, and therefore in the fingerprint. Only *floating*
tensors (float16, bfloat16, float32, float64) are carried in the flat float32 vector that
peers exchange and average. Integer and boolean tensors, such as BatchNorm's
``num_batches_tracked``, stay local: averaging a step counter is meaningless, and a
float32 vector cannot even hold an int64 exactly beyond 2**24. ``set_flat`` leaves them
untouched, so they survive any number of round trips bit for bit.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from gossipfl.model.errors import LayoutError

#: Tensor dtypes a layout may name. Floating ones are carried in the flat vector.
FLOAT_DTYPES: frozenset[str] = frozenset({"float16", "bfloat16", "float32", "float64"})
LAYOUT_DTYPES: frozenset[str] = FLOAT_DTYPES | frozenset(
    {"int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "bool"}
)
#: Longest tensor name, in characters.
MAX_NAME_LEN = 256
#: Most dimensions of one tensor.
MAX_NDIM = 8
#: Largest number of elements one tensor may declare (2**40), so that a layout sent by a
#: stranger cannot make products of dimensions overflow a 64-bit integer anywhere.
MAX_TENSOR_ELEMENTS = 1 << 40
FINGERPRINT_SIZE = 32


def check_name(name: object) -> str:
    """Return ``name`` if it is a valid tensor name, else raise :class:`LayoutError`.

    A name is 1 to 256 printable characters without whitespace, so the text form can
    separate fields with single spaces and a name cannot smuggle control characters into
    a log line.
    """
    if not isinstance(name, str) or not name:
        raise LayoutError(f"a tensor name must be a non-empty string, got {name!r}")
    if len(name) > MAX_NAME_LEN:
        raise LayoutError(f"tensor name {name[:40]!r}... is longer than {MAX_NAME_LEN} chars")
    if not name.isprintable() or " " in name:
        raise LayoutError(f"tensor name {name!r} contains whitespace or control characters")
    return name


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One tensor of a layout: its name, dtype name (numpy/torch spelling) and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        check_name(self.name)
        if self.dtype not in LAYOUT_DTYPES:
            raise LayoutError(
                f"tensor {self.name!r} has dtype {self.dtype!r}; "
                f"a layout allows {', '.join(sorted(LAYOUT_DTYPES))}"
            )
        if not isinstance(self.shape, tuple) or len(self.shape) > MAX_NDIM:
            raise LayoutError(f"tensor {self.name!r}: shape must be a tuple of <= {MAX_NDIM} ints")
        count = 1
        for dim in self.shape:
            if type(dim) is not int or dim < 0:
                raise LayoutError(f"tensor {self.name!r}: bad dimension {dim!r} in {self.shape}")
            count *= dim
        if count > MAX_TENSOR_ELEMENTS:
            raise LayoutError(f"tensor {self.name!r} declares {count} elements (> 2**40)")

    @property
    def size(self) -> int:
        """Number of elements."""
        count = 1
        for dim in self.shape:
            count *= dim
        return count

    @property
    def carried(self) -> bool:
        """Whether this tensor travels in the flat float32 vector (floating dtypes only)."""
        return self.dtype in FLOAT_DTYPES

    def text(self) -> str:
        """The canonical one-line form, without the newline."""
        return f"{self.name} {self.dtype} [{','.join(map(str, self.shape))}]"

    def describe(self) -> str:
        """A human description for error messages."""
        return f"{self.name!r} {self.dtype} {list(self.shape)}"


@dataclass(frozen=True)
class Layout:
    """An ordered tuple of :class:`TensorSpec` with its canonical text and fingerprint.

    Construction validates everything (names unique and well formed, dtypes known), so a
    ``Layout`` object is always one a peer may send.
    """

    tensors: tuple[TensorSpec, ...]
    text: str = field(init=False, repr=False, compare=False)
    fingerprint: bytes = field(init=False, repr=False, compare=False)
    num_params: int = field(init=False, repr=False, compare=False)
    slices: tuple[tuple[int, int, int], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        raw: object = self.tensors
        if not isinstance(raw, tuple):  # accept any iterable of specs, store a tuple
            object.__setattr__(self, "tensors", tuple(self.tensors))
        seen: set[str] = set()
        slices: list[tuple[int, int, int]] = []
        offset = 0
        for index, spec in enumerate(self.tensors):
            if not isinstance(spec, TensorSpec):
                raise LayoutError(f"layout entry #{index} is not a TensorSpec: {spec!r}")
            if spec.name in seen:
                raise LayoutError(f"tensor name {spec.name!r} appears twice in the layout")
            seen.add(spec.name)
            if spec.carried:
                slices.append((index, offset, spec.size))
                offset += spec.size
        text = "".join(spec.text() + "\n" for spec in self.tensors)
        object.__setattr__(self, "text", text)
        fingerprint = hashlib.blake2b(text.encode(), digest_size=FINGERPRINT_SIZE).digest()
        object.__setattr__(self, "fingerprint", fingerprint)
        object.__setattr__(self, "num_params", offset)
        object.__setattr__(self, "slices", tuple(slices))

    @classmethod
    def of(cls, specs: Iterable[tuple[str, str, Sequence[int]]]) -> Layout:
        """Build a layout from ``(name, dtype, shape)`` triples."""
        return cls(tuple(TensorSpec(n, d, tuple(int(x) for x in s)) for n, d, s in specs))

    @classmethod
    def from_text(cls, text: str, *, max_tensors: int = 1 << 16) -> Layout:
        """Parse the canonical text form; anything non-canonical is a :class:`LayoutError`.

        Canonical means: every line ends in ``\\n`` (the last one too), fields separated by
        one space, dimensions written in decimal without sign or leading zeros. Parsing
        re-renders the layout and compares, so two texts with the same fingerprint always
        describe the same layout.
        """
        if not isinstance(text, str):
            raise LayoutError("a layout text must be a string")
        if type(text) is str and cls is Layout:  # (a str subclass may hash as it likes)
            return _parsed(text, max_tensors)
        return cls._parse(text, max_tensors)

    @classmethod
    def _parse(cls, text: str, max_tensors: int) -> Layout:
        if text and not text.endswith("\n"):
            raise LayoutError("a layout text must end with a newline")
        lines = text.split("\n")[:-1] if text else []
        if len(lines) > max_tensors:
            raise LayoutError(f"layout has {len(lines)} tensors, more than {max_tensors}")
        specs = []
        for number, line in enumerate(lines, 1):
            parts = line.split(" ")
            if len(parts) != 3 or not (parts[2].startswith("[") and parts[2].endswith("]")):
                raise LayoutError(f"layout line {number} is not 'name dtype [dims]': {line!r}")
            name, dtype, dims = parts
            inner = dims[1:-1]
            try:
                shape = tuple(int(d) for d in inner.split(",")) if inner else ()
            except ValueError:
                raise LayoutError(f"layout line {number} has bad dimensions {dims!r}") from None
            specs.append(TensorSpec(name, dtype, shape))
        layout = cls(tuple(specs))
        if layout.text != text:
            raise LayoutError("layout text is not in canonical form")
        return layout

    def __len__(self) -> int:
        return len(self.tensors)


@functools.lru_cache(maxsize=64)
def _parsed(text: str, max_tensors: int) -> Layout:
    """:meth:`Layout.from_text` of a ``str``, remembered: a ``Layout`` is immutable and
    parsing is a pure function of the text and the bound, and every Hello a peer receives
    carries a layout text, the same one from every neighbour of one network (1,024
    simulated peers parsed 4,096 alike, ~30 µs each). A text that fails raises each time
    (``lru_cache`` keeps results, not exceptions); 64 entries bound what a peer sending
    many different layouts can make it hold."""
    return Layout._parse(text, max_tensors)


def compare_layouts(mine: Layout, theirs: Layout) -> str | None:
    """Return ``None`` if the layouts are identical, else a sentence naming the first
    tensor that differs (and how), for a refusal message and for the operator's log."""
    if mine.fingerprint == theirs.fingerprint and mine.text == theirs.text:
        return None
    for index, (a, b) in enumerate(zip(mine.tensors, theirs.tensors, strict=False)):
        if a == b:
            continue
        where = f"tensor #{index}"
        if a.name != b.name:
            return f"{where} differs: ours is {a.describe()}, theirs is {b.describe()}"
        if a.shape != b.shape:
            return (
                f"{where} {a.name!r} has shape {list(a.shape)} here but {list(b.shape)} at the peer"
            )
        return f"{where} {a.name!r} has dtype {a.dtype} here but {b.dtype} at the peer"
    common = min(len(mine), len(theirs))
    if len(mine) > len(theirs):
        return (
            f"the peer's model has {len(theirs)} tensors, ours {len(mine)}: "
            f"it lacks tensor #{common} {mine.tensors[common].describe()}"
        )
    return (
        f"the peer's model has {len(theirs)} tensors, ours {len(mine)}: "
        f"it has an extra tensor #{common} {theirs.tensors[common].describe()}"
    )
