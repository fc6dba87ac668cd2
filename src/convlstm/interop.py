"""Conversion between Keras 3 ``ConvLSTM1D`` / ``ConvLSTM2D`` / ``ConvLSTM3D`` layers and
:class:`~convlstm.layers.ConvLSTM`.

Keras is imported lazily: ``convlstm`` itself does not need it. Any Keras 3 backend works; the
tests run Keras on its torch backend (``KERAS_BACKEND=torch``).

The two compute the same function (same gate order i, f, g/c, o; TensorFlow's "same" padding with
an even kernel's extra pixel on the high side; stride and dilation on the input convolution only; a
stride-1 "same" recurrent convolution; no peepholes). What differs is the layout and what is returned:

- tensors: Keras ``(B, T, *S, C)`` (``channels_last``) or ``(B, T, C, *S)`` (``channels_first``);
  convlstm ``(B, T, C, *S)`` (``(T, B, ...)`` if ``batch_first=False``). A ``channels_last``
  sequence ``x`` is ``x.movedim(-1, 2)`` in convlstm's layout and back with ``.movedim(2, -1)``; a
  state ``(B, *S', C_h)`` is ``h.movedim(-1, 1)``.
- kernels: Keras ``kernel (*k, C_in, 4*C_h)`` and ``recurrent_kernel (*k, C_h, 4*C_h)`` (whatever
  the ``data_format``); convlstm ``weight_ih (4*C_h, C_in, *k)`` and ``weight_hh (4*C_h, C_h, *k)``.
- outputs: Keras returns the last step only unless ``return_sequences=True``; convlstm returns
  every step, so Keras' output is ``output[:, -1]``.
- states: Keras' ``return_state=True`` adds the last layer's ``h, c``; convlstm returns
  ``states``, one ``(h, c)`` per layer, so Keras' are ``states[-1]``. Keras'
  ``layer(x, initial_state=[h, c])`` is ``module(x, [(h, c)])`` (one pair per layer for a stack).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from convlstm.cells import ACTIVATIONS, ConvLSTMCell
from convlstm.layers import ConvLSTM, ConvLSTM1d, ConvLSTM2d, ConvLSTM3d

if TYPE_CHECKING:
    import keras

__all__ = ["KERAS_ACTIVATIONS", "from_keras", "to_keras"]

_BACKENDS = ("tensorflow", "jax", "torch")


def _import_keras(caller: str) -> Any:
    """``import keras``, or an ImportError that says what to install or set.

    Keras 3 picks its backend at its first import, from ``KERAS_BACKEND`` or
    ``~/.keras/keras.json``, and defaults to TensorFlow: without TensorFlow installed and with
    nothing configured, the import fails deep inside Keras.
    """
    try:
        import keras
    except ModuleNotFoundError as error:
        missing = (error.name or "").split(".")[0]
        if missing == "keras":
            raise ImportError(f"{caller} needs Keras 3: pip install 'convlstm[keras]'") from error
        if missing in _BACKENDS:
            raise ImportError(
                f"{caller}: Keras could not load its backend: {missing} is not installed "
                "(Keras uses TensorFlow unless KERAS_BACKEND or ~/.keras/keras.json names "
                "another). Set the environment variable KERAS_BACKEND=torch before Keras is "
                f"first imported, or install {missing}"
            ) from error
        raise
    return keras


KERAS_ACTIVATIONS = (
    "tanh",
    "sigmoid",
    "hard_sigmoid",
    "hard_tanh",
    "relu",
    "elu",
    "gelu",
    "silu",
    "softsign",
    "linear",
)
"""Activations that Keras 3 and :data:`~convlstm.cells.ACTIVATIONS` define identically (Keras 3's
``hard_sigmoid`` is ``relu6(x + 3) / 6``, as :func:`torch.nn.functional.hardsigmoid`; Keras 2's was
``0.2 x + 0.5``; ``gelu`` is the exact one; ``swish`` is Keras' alias of ``silu``)."""

_MODULES: dict[int, Callable[..., ConvLSTM]] = {1: ConvLSTM1d, 2: ConvLSTM2d, 3: ConvLSTM3d}
_SHARED = ("padding", "use_bias", "activation", "recurrent_activation", "recurrent_dropout")


@dataclass(frozen=True)
class _KerasLayer:
    """What :func:`from_keras` reads from one Keras ConvLSTM layer."""

    rank: int
    in_channels: int
    filters: int
    kernel_size: tuple[int, ...]
    strides: tuple[int, ...]
    dilation_rate: tuple[int, ...]
    padding: str
    data_format: str
    activation: str
    recurrent_activation: str
    use_bias: bool
    unit_forget_bias: bool
    recurrent_dropout: float
    return_sequences: bool
    weights: list[np.ndarray]


def _activation_name(keras_module: Any, function: object, what: str) -> str:
    for name in KERAS_ACTIVATIONS:
        if keras_module.activations.get(name) is function:
            return name
    label = getattr(function, "__name__", repr(function))
    raise ValueError(
        f"{what}={label!r} has no convlstm equivalent; supported activations: "
        f"{list(KERAS_ACTIVATIONS)}"
    )


def _read(keras_module: Any, layer: Any, index: int) -> _KerasLayer:
    ranks = {
        keras_module.layers.ConvLSTM1D: 1,
        keras_module.layers.ConvLSTM2D: 2,
        keras_module.layers.ConvLSTM3D: 3,
    }
    rank = next((r for cls, r in ranks.items() if isinstance(layer, cls)), None)
    if rank is None:
        raise TypeError(
            f"layers[{index}] must be a keras.layers.ConvLSTM1D, ConvLSTM2D or ConvLSTM3D, got "
            f"{type(layer).__name__} (Bidirectional wrappers are not supported)"
        )
    what = f"layers[{index}] ({layer.name})"
    if layer.go_backwards:
        raise ValueError(f"{what}: go_backwards=True is not supported; reverse the input in time")
    if layer.stateful:
        raise ValueError(
            f"{what}: stateful=True is not supported; pass the returned states back instead"
        )
    if layer.padding not in ("same", "valid"):
        raise ValueError(f"{what}: padding={layer.padding!r} is not supported (same, valid)")
    weights = layer.get_weights()
    if not layer.built or not weights:
        raise ValueError(
            f"{what} is not built: call it on an input or layer.build(input_shape) first"
        )
    kernel = weights[0]
    return _KerasLayer(
        rank=rank,
        in_channels=int(kernel.shape[-2]),
        filters=int(layer.filters),
        kernel_size=tuple(layer.kernel_size),
        strides=tuple(layer.strides),
        dilation_rate=tuple(layer.dilation_rate),
        padding=layer.padding,
        data_format=layer.data_format,
        activation=_activation_name(keras_module, layer.activation, f"{what}: activation"),
        recurrent_activation=_activation_name(
            keras_module, layer.recurrent_activation, f"{what}: recurrent_activation"
        ),
        use_bias=bool(layer.use_bias),
        unit_forget_bias=bool(layer.unit_forget_bias),
        recurrent_dropout=float(layer.recurrent_dropout),
        return_sequences=bool(layer.return_sequences),
        weights=weights,
    )


def _check_chain(specs: list[_KerasLayer]) -> None:
    first = specs[0]
    for index, spec in enumerate(specs[1:], start=1):
        previous = specs[index - 1]
        if spec.rank != first.rank:
            raise ValueError(
                f"layers must all have the same rank: layers[0] is ConvLSTM{first.rank}D, "
                f"layers[{index}] is ConvLSTM{spec.rank}D"
            )
        if spec.data_format != first.data_format:
            raise ValueError(
                f"layers must share data_format: layers[0] has {first.data_format!r}, "
                f"layers[{index}] has {spec.data_format!r}"
            )
        if spec.in_channels != previous.filters:
            raise ValueError(
                f"layers[{index}] takes {spec.in_channels} input channels but layers[{index - 1}] "
                f"has filters={previous.filters}: the layers do not form a stack"
            )
        if not previous.return_sequences:
            raise ValueError(
                f"layers[{index - 1}] has return_sequences=False, so layers[{index}] cannot be "
                f"stacked on it: every layer but the last needs return_sequences=True"
            )
        for name in _SHARED:
            if getattr(spec, name) != getattr(first, name):
                raise ValueError(
                    f"convlstm shares {name} between all layers of a module, but layers[0] has "
                    f"{name}={getattr(first, name)!r} and layers[{index}] has "
                    f"{name}={getattr(spec, name)!r}; convert those layers separately"
                )


def _cells(module: ConvLSTM) -> list[ConvLSTMCell]:
    return cast("list[ConvLSTMCell]", list(module.cells))


def _kernel_to_torch(kernel: np.ndarray) -> torch.Tensor:
    """Keras ``(*k, C_in, C_out)`` -> torch ``(C_out, C_in, *k)``."""
    rank = kernel.ndim - 2
    return torch.from_numpy(np.ascontiguousarray(kernel.transpose(rank + 1, rank, *range(rank))))


def _kernel_to_keras(weight: torch.Tensor) -> np.ndarray:
    """torch ``(C_out, C_in, *k)`` -> Keras ``(*k, C_in, C_out)``."""
    rank = weight.dim() - 2
    return weight.detach().cpu().permute(*range(2, rank + 2), 1, 0).contiguous().numpy()


def from_keras(
    layers: keras.layers.Layer | Sequence[keras.layers.Layer], *, batch_first: bool = True
) -> ConvLSTM:
    """Build the :class:`~convlstm.layers.ConvLSTM` equivalent to built Keras ConvLSTM layer(s).

    Args:
        layers: one built ``keras.layers.ConvLSTM1D`` / ``ConvLSTM2D`` / ``ConvLSTM3D``, or a list
            of them forming a stack (each layer's input channels equal to the previous layer's
            ``filters``, ``return_sequences=True`` on all but possibly the last).
        batch_first: of the returned module; ``False`` makes it time-major ``(T, B, ...)``.

    Returns:
        a :class:`~convlstm.layers.ConvLSTM1d` / ``2d`` / ``3d`` in the dtype of the Keras weights,
        with ``weight_ih``, ``weight_hh`` and ``bias`` copied from ``kernel``,
        ``recurrent_kernel`` and ``bias`` (transposed as in the module docstring).

    Mapped per layer: ``filters`` (``hidden_channels``), ``kernel_size``, ``strides``
    (``stride``), ``dilation_rate`` (``dilation``) and ``unit_forget_bias`` (which only affects
    :meth:`~convlstm.layers.ConvLSTM.reset_parameters`). Mapped for the module, so equal in all
    layers: ``padding``, ``use_bias`` (``bias``), ``activation``, ``recurrent_activation`` (names in
    :data:`KERAS_ACTIVATIONS`) and ``recurrent_dropout`` (both draw masks on ``h`` once per
    sequence; Keras draws one per gate, convlstm one shared by the four gates).

    Not mapped: Keras' ``dropout`` (one mask per gate on every layer's input, fixed over time),
    which has no convlstm counterpart: ``module.dropout`` (between layers, redrawn every step)
    stays 0. Both are inactive in inference, where the outputs agree. Regularisers, constraints
    and initialisers are training-time only; ``data_format`` only fixes Keras' tensor layout.

    Keras returns the last step only unless ``return_sequences=True``; the module returns every
    step, so Keras' ``layer(x)`` is ``module(x)[0][:, -1]`` (``[-1]`` if not ``batch_first``). The
    final ``h, c`` that Keras adds with ``return_state=True`` are the last pair of ``states``,
    ``module(x)[1][-1]``.

    Raises:
        TypeError: an entry is not a Keras ConvLSTM layer (``Bidirectional`` included).
        ValueError: an option convlstm cannot represent (``go_backwards``, ``stateful``, an
            activation outside :data:`KERAS_ACTIVATIONS`), an unbuilt layer, or layers that do not
            form a stack or differ in an option the module shares.
        ImportError: Keras 3 is missing, or its backend is: Keras defaults to TensorFlow, so
            without it set ``KERAS_BACKEND=torch`` before Keras is first imported.

    Example (``channels_last`` Keras, 2 sequences of 4 frames 8×8×3)::

        import keras
        import numpy as np
        import torch
        from convlstm.interop import from_keras

        x = np.random.rand(2, 4, 8, 8, 3).astype("float32")
        layer = keras.layers.ConvLSTM2D(16, 3, padding="same", return_sequences=True)
        y = keras.ops.convert_to_numpy(layer(x))             # (2, 4, 8, 8, 16)
        module = from_keras(layer)                            # ConvLSTM2d(3, [16], 3)
        output, states = module(torch.from_numpy(x).movedim(-1, 2))
        np.testing.assert_allclose(output.movedim(2, -1).detach().numpy(), y, atol=1e-5)
    """
    keras = _import_keras("from_keras")
    layer_list = list(layers) if isinstance(layers, list | tuple) else [layers]
    if not layer_list:
        raise ValueError("layers must hold at least one Keras ConvLSTM layer, got an empty list")
    specs = [_read(keras, layer, index) for index, layer in enumerate(layer_list)]
    _check_chain(specs)
    first = specs[0]
    dtype = torch.from_numpy(first.weights[0]).dtype
    module = _MODULES[first.rank](
        first.in_channels,
        [spec.filters for spec in specs],
        [spec.kernel_size for spec in specs],
        stride=[spec.strides for spec in specs],
        dilation=[spec.dilation_rate for spec in specs],
        padding=first.padding,
        bias=first.use_bias,
        activation=first.activation,
        recurrent_activation=first.recurrent_activation,
        recurrent_dropout=first.recurrent_dropout,
        batch_first=batch_first,
        dtype=dtype,
    )
    with torch.no_grad():
        for cell, spec in zip(_cells(module), specs, strict=True):
            cell.unit_forget_bias = spec.unit_forget_bias
            cell.weight_ih.copy_(_kernel_to_torch(spec.weights[0]))
            cell.weight_hh.copy_(_kernel_to_torch(spec.weights[1]))
            if cell.bias is not None:
                cell.bias.copy_(torch.from_numpy(spec.weights[2]))
    return module


def to_keras(
    module: ConvLSTM,
    spatial_size: Sequence[int] | None = None,
    *,
    data_format: str = "channels_last",
    return_sequences: bool = True,
) -> list[keras.layers.Layer]:
    """Build, one per layer, the built Keras ConvLSTM layers equivalent to ``module``.

    Args:
        module: a unidirectional :class:`~convlstm.layers.ConvLSTM` without peepholes or ``norm``,
            with ``"same"``/``"valid"`` padding and activations from :data:`KERAS_ACTIVATIONS`.
        spatial_size: the input frames' spatial size ``*S`` (Keras builds ConvLSTM layers for a
            fixed one); defaults to the module's ``spatial_size``.
        data_format: of the Keras layers, ``"channels_last"`` or ``"channels_first"``.
        return_sequences: of the last Keras layer (the others return sequences).

    Returns:
        the layers in stacking order, in the module's dtype, with ``recurrent_dropout`` copied
        (``dropout`` is not: see :func:`from_keras`). Apply them in turn to a ``(B, T, *S, C_in)``
        (``channels_last``) array.

    Raises:
        ValueError: the module uses something Keras' ConvLSTM does not have, or no spatial size.
        ImportError: Keras 3 or its backend is missing (see :func:`from_keras`).

    Example::

        import numpy as np
        from convlstm import ConvLSTM2d
        from convlstm.interop import to_keras

        first, second = to_keras(ConvLSTM2d(3, [16, 8], 3), (8, 8))
        y = second(first(np.random.rand(2, 4, 8, 8, 3).astype("float32")))  # (2, 4, 8, 8, 8)
    """
    keras = _import_keras("to_keras")
    cells = _cells(module)
    first = cells[0]
    if module.bidirectional:
        raise ValueError("bidirectional modules are not supported (Keras needs Bidirectional)")
    if first.peephole is not None or first.norm is not None:
        raise ValueError(
            f"Keras' ConvLSTM has no peepholes or normalisation, got peephole={first.peephole!r}, "
            f"norm={first.norm!r}"
        )
    if first.padding not in ("same", "valid"):
        raise ValueError(f'Keras supports padding "same" or "valid", got {first.padding!r}')
    names = {id(ACTIVATIONS[name]): name for name in KERAS_ACTIVATIONS}
    activations = []
    for what, function in (
        ("activation", first.activation),
        ("recurrent_activation", first.recurrent_activation),
    ):
        if id(function) not in names:
            label = getattr(function, "__name__", repr(function))
            raise ValueError(
                f"{what}={label!r} has no Keras equivalent; supported: {list(KERAS_ACTIVATIONS)}"
            )
        activations.append(names[id(function)])
    size = first.spatial_size if spatial_size is None else tuple(spatial_size)
    if size is None:
        raise ValueError("spatial_size is required: Keras builds ConvLSTM layers for a fixed size")
    layer_class = {
        1: keras.layers.ConvLSTM1D,
        2: keras.layers.ConvLSTM2D,
        3: keras.layers.ConvLSTM3D,
    }
    dtype = str(first.weight_ih.dtype).removeprefix("torch.")
    result = []
    for index, cell in enumerate(cells):
        layer = layer_class[module.spatial_dims](
            cell.hidden_channels,
            cell.kernel_size,
            strides=cell.stride,
            padding=first.padding,
            data_format=data_format,
            dilation_rate=cell.dilation,
            activation=activations[0],
            recurrent_activation=activations[1],
            use_bias=cell.bias is not None,
            unit_forget_bias=cell.unit_forget_bias,
            recurrent_dropout=module.recurrent_dropout,
            return_sequences=return_sequences or index < module.num_layers - 1,
            dtype=dtype,
        )
        shape = (
            (None, None, *size, cell.in_channels)
            if data_format == "channels_last"
            else (None, None, cell.in_channels, *size)
        )
        layer.build(shape)
        weights = [_kernel_to_keras(cell.weight_ih), _kernel_to_keras(cell.weight_hh)]
        if cell.bias is not None:
            weights.append(cell.bias.detach().cpu().numpy())
        layer.set_weights(weights)
        result.append(layer)
        size = cell.output_size(size)
    return result
