"""What the benchmark compares :class:`~convlstm.layers.ConvLSTM2d` with.

Shape legend: ``B`` batch, ``T`` steps, ``C_in`` input channels, ``C`` hidden channels of a layer,
``H, W`` frame size, ``k`` kernel size.

* :class:`NaiveConvLSTM`: the seed tutorial's cell, eight ``nn.Conv2d`` (``W_x*`` with bias,
  ``W_h*`` without) and learned spatial peepholes, stacked and stepped frame by frame — the same
  function as ``ConvLSTM2d(..., peephole="spatial")``, and :func:`naive_from` copies its weights.
* :class:`FloorConvs`: only the convolutions our layer runs (the batched input convolution and one
  recurrent convolution per step, channels-last) and the copies that feed them; no gate arithmetic.
  No ConvLSTM can be faster, so it is the floor.
* :func:`keras_from`: Keras 3 ``ConvLSTM2D`` layers (torch backend) with our weights.
* :func:`torchgeo_from`: torchgeo's ``ConvLSTM`` (``pip install convlstm[bench]`` pins
  torchgeo 0.10.1, which needs Python >= 3.12), its own code, with our weights.
* :class:`JointConvLSTM`: the widely copied ndrplz/ConvLSTM_pytorch cell that torchgeo 0.10.1
  ships (``torchgeo/models/convlstm.py``): per step ``cat([x_t, h])``, one convolution, split,
  activations; layer by layer, outputs stacked. Written here from that code's operations, so that
  the benchmark has torchgeo's computation where torchgeo cannot be installed.
* :class:`OpenSTLConvLSTM`: OpenSTL's ``ConvLSTMCell`` (``openstl/modules/convlstm_modules.py``,
  without layer norm: two bias-free convolutions, split, activations) stepped as its
  ``ConvLSTM_Model`` does (every layer at each step), written here from those operations
  (OpenSTL is not on PyPI).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from convlstm._layout import to_channels_last
from convlstm.cells import ConvLSTMCell
from convlstm.layers import ConvLSTM

__all__ = [
    "FloorConvs",
    "JointConvLSTM",
    "KerasStack",
    "NaiveCell",
    "NaiveConvLSTM",
    "OpenSTLConvLSTM",
    "from_keras_layout",
    "joint_from",
    "keras_from",
    "naive_from",
    "openstl_from",
    "to_keras_layout",
    "torchgeo_from",
]

GATES = "ifco"  # the seed's names for the gates (i, f, g=c, o)
# torchgeo's cell splits its joint convolution's output as (i, f, o, g); ours is (i, f, g, o).
_TORCHGEO_GATES = (0, 1, 3, 2)


class NaiveCell(nn.Module):
    """The seed's ConvLSTM cell: one ``Conv2d`` per gate and input, spatial peepholes.

    ``forward(x, h, c)``: ``x`` ``(B, C_in, H, W)``, ``h``, ``c`` ``(B, C, H, W)`` -> ``(h', c')``.
    """

    # Registered by name in __init__: W{x,h}{i,f,c,o} convolutions, Wc{i,f,o} peepholes.
    Wxi: nn.Conv2d
    Wxf: nn.Conv2d
    Wxc: nn.Conv2d
    Wxo: nn.Conv2d
    Whi: nn.Conv2d
    Whf: nn.Conv2d
    Whc: nn.Conv2d
    Who: nn.Conv2d
    Wci: nn.Parameter
    Wcf: nn.Parameter
    Wco: nn.Parameter

    def __init__(self, in_channels: int, hidden_channels: int, kernel: int, size: tuple[int, ...]):
        super().__init__()
        self.hidden_channels = hidden_channels
        for g in GATES:
            self.add_module(
                f"Wx{g}", nn.Conv2d(in_channels, hidden_channels, kernel, padding="same")
            )
            self.add_module(
                f"Wh{g}",
                nn.Conv2d(hidden_channels, hidden_channels, kernel, padding="same", bias=False),
            )
        for g in "ifo":
            self.register_parameter(f"Wc{g}", nn.Parameter(torch.zeros(1, hidden_channels, *size)))

    def forward(self, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        ci = torch.sigmoid(self.Wxi(x) + self.Whi(h) + c * self.Wci)
        cf = torch.sigmoid(self.Wxf(x) + self.Whf(h) + c * self.Wcf)
        cc = cf * c + ci * torch.tanh(self.Wxc(x) + self.Whc(h))
        co = torch.sigmoid(self.Wxo(x) + self.Who(h) + cc * self.Wco)
        return co * torch.tanh(cc), cc


def _stack(
    make: Callable[[int, int], nn.Module], in_channels: int, hidden: Sequence[int]
) -> nn.ModuleList:
    """One cell per layer, ``make(input channels, hidden channels)``, each layer reading the
    hidden state of the one below."""
    channels = [in_channels, *hidden]
    return nn.ModuleList(make(channels[i], hidden[i]) for i in range(len(hidden)))


class _LayerByLayer(nn.Module):
    """A stack of cells (``hidden_channels``; ``cell(x, h, c) -> (h', c')``) run a layer at a
    time over the whole sequence from zero states, each layer's outputs stacked:
    ``forward(x)``: ``(B, T, C_in, H, W)`` -> the last layer's ``h`` ``(B, T, C, H, W)``."""

    cells: nn.ModuleList

    def forward(self, x: Tensor) -> Tensor:
        for cell in self.cells:
            channels = cast(int, cell.hidden_channels)
            h = x.new_zeros(x.shape[0], channels, *x.shape[3:])
            c = torch.zeros_like(h)
            outputs = []
            for t in range(x.shape[1]):
                h, c = cell(x[:, t], h, c)
                outputs.append(h)
            x = torch.stack(outputs, dim=1)
        return x


class NaiveConvLSTM(_LayerByLayer):
    """A stack of :class:`NaiveCell` stepped frame by frame from zero states, like the seed.

    ``forward(x)``: ``x`` ``(B, T, C_in, H, W)`` -> the last layer's ``h`` ``(B, T, C, H, W)``.
    """

    def __init__(self, in_channels: int, hidden: list[int], kernel: int, size: tuple[int, ...]):
        super().__init__()
        self.cells = _stack(lambda i, c: NaiveCell(i, c, kernel, size), in_channels, hidden)


def naive_from(layer: ConvLSTM) -> NaiveConvLSTM:
    """A :class:`NaiveConvLSTM` computing what ``layer`` (2-D, ``peephole="spatial"``, odd
    kernels, stride 1) computes, with its weights."""
    cells = cast("Sequence[ConvLSTMCell]", layer.cells)
    first = cells[0]
    assert first.spatial_size is not None and first.peephole == "spatial"
    naive = NaiveConvLSTM(
        layer.in_channels, layer.hidden_channels, first.kernel_size[0], first.spatial_size
    ).to(first.weight_ih)
    with torch.no_grad():
        for cell, seed in zip(cells, naive.cells, strict=True):
            assert cell.bias is not None
            w_ih, w_hh = cell.weight_ih.chunk(4), cell.weight_hh.chunk(4)
            bias = cell.bias.chunk(4)
            for index, g in enumerate(GATES):
                getattr(seed, f"Wx{g}").weight.copy_(w_ih[index])
                getattr(seed, f"Wx{g}").bias.copy_(bias[index])
                getattr(seed, f"Wh{g}").weight.copy_(w_hh[index])
            for g in "ifo":
                getattr(seed, f"Wc{g}").copy_(getattr(cell, f"weight_c{g}").unsqueeze(0))
    return naive


class JointCell(nn.Module):
    """torchgeo's (ndrplz's) cell: ``forward(x, h, c)``, ``x`` ``(B, C_in, H, W)``, ``h``, ``c``
    ``(B, C, H, W)`` -> ``(h', c')``; one convolution of ``[x, h]`` whose output channels are the
    gates in the order (i, f, o, g)."""

    def __init__(self, in_channels: int, hidden_channels: int, kernel: int):
        super().__init__()
        self.hidden_channels = hidden_channels
        self.conv = nn.Conv2d(
            in_channels + hidden_channels, 4 * hidden_channels, kernel, padding=kernel // 2
        )

    def forward(self, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        gates = self.conv(torch.cat([x, h], dim=1))
        a_i, a_f, a_o, a_g = torch.split(gates, self.hidden_channels, dim=1)
        i, f, o, g = torch.sigmoid(a_i), torch.sigmoid(a_f), torch.sigmoid(a_o), torch.tanh(a_g)
        c_next = f * c + i * g
        return o * torch.tanh(c_next), c_next


class JointConvLSTM(_LayerByLayer):
    """A stack of :class:`JointCell` run layer by layer from zero states, each layer's outputs
    stacked, as torchgeo's ``ConvLSTM`` runs: ``forward(x)``: ``(B, T, C_in, H, W)`` -> the last
    layer's ``h`` ``(B, T, C, H, W)``."""

    def __init__(self, in_channels: int, hidden: Sequence[int], kernel: int):
        super().__init__()
        self.cells = _stack(lambda i, c: JointCell(i, c, kernel), in_channels, hidden)


class OpenSTLCell(nn.Module):
    """OpenSTL's cell without layer norm: ``forward(x, h, c)`` -> ``(h', c')`` (shapes as
    :class:`JointCell`), from two bias-free convolutions ``conv_x`` and ``conv_h`` whose output
    channels are the gates (i, f, g, o)."""

    def __init__(self, in_channels: int, hidden_channels: int, kernel: int):
        super().__init__()
        self.hidden_channels = hidden_channels
        pad = kernel // 2
        self.conv_x = nn.Conv2d(in_channels, 4 * hidden_channels, kernel, padding=pad, bias=False)
        self.conv_h = nn.Conv2d(
            hidden_channels, 4 * hidden_channels, kernel, padding=pad, bias=False
        )

    def forward(self, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        i_x, f_x, g_x, o_x = torch.split(self.conv_x(x), self.hidden_channels, dim=1)
        i_h, f_h, g_h, o_h = torch.split(self.conv_h(h), self.hidden_channels, dim=1)
        i = torch.sigmoid(i_x + i_h)
        f = torch.sigmoid(f_x + f_h)
        g = torch.tanh(g_x + g_h)
        c_new = f * c + i * g
        o = torch.sigmoid(o_x + o_h)
        return o * torch.tanh(c_new), c_new


class OpenSTLConvLSTM(nn.Module):
    """A stack of :class:`OpenSTLCell` stepped as OpenSTL's ``ConvLSTM_Model``: at each step
    every layer in turn, from zero states. ``forward(x)``: ``(B, T, C_in, H, W)`` -> the last
    layer's ``h`` ``(B, T, C, H, W)``."""

    def __init__(self, in_channels: int, hidden: Sequence[int], kernel: int):
        super().__init__()
        self.cells = _stack(lambda i, c: OpenSTLCell(i, c, kernel), in_channels, hidden)

    def forward(self, x: Tensor) -> Tensor:
        cells = cast("Sequence[OpenSTLCell]", self.cells)
        h = [x.new_zeros(x.shape[0], cell.hidden_channels, *x.shape[3:]) for cell in cells]
        c = [torch.zeros_like(state) for state in h]
        outputs = []
        for t in range(x.shape[1]):
            inp = x[:, t]
            for index, cell in enumerate(cells):
                h[index], c[index] = cell(inp, h[index], c[index])
                inp = h[index]
            outputs.append(inp)
        return torch.stack(outputs, dim=1)


def _gate_blocks(cell: ConvLSTMCell) -> tuple[list[Tensor], list[Tensor], list[Tensor] | None]:
    """``cell``'s input and recurrent kernels and bias split by gate (i, f, g, o), after checking
    that a peer's plain cell computes the same function (2-D, no peepholes or norm, odd kernels,
    stride 1)."""
    assert cell.spatial_dims == 2 and cell.peephole is None and cell.norm is None
    assert all(k % 2 for k in cell.kernel_size) and cell.kernel_size[0] == cell.kernel_size[1]
    bias = None if cell.bias is None else list(cell.bias.chunk(4))
    return list(cell.weight_ih.chunk(4)), list(cell.weight_hh.chunk(4)), bias


def joint_from(layer: ConvLSTM) -> JointConvLSTM:
    """A :class:`JointConvLSTM` with ``layer``'s weights (2-D, bias, no peepholes or norm, odd
    square kernels, stride 1): the same function."""
    cells = cast("Sequence[ConvLSTMCell]", layer.cells)
    peer = JointConvLSTM(layer.in_channels, layer.hidden_channels, cells[0].kernel_size[0])
    peer = peer.to(cells[0].weight_ih)
    with torch.no_grad():
        for cell, theirs in zip(cells, cast("Sequence[JointCell]", peer.cells), strict=True):
            w_ih, w_hh, bias = _gate_blocks(cell)
            assert bias is not None
            theirs.conv.weight.copy_(
                torch.cat([torch.cat([w_ih[g], w_hh[g]], dim=1) for g in _TORCHGEO_GATES])
            )
            cast(Tensor, theirs.conv.bias).copy_(torch.cat([bias[g] for g in _TORCHGEO_GATES]))
    return peer


def openstl_from(layer: ConvLSTM) -> OpenSTLConvLSTM:
    """An :class:`OpenSTLConvLSTM` with ``layer``'s weights (2-D, ``bias=False``, no peepholes
    or norm, odd square kernels, stride 1): the same function."""
    cells = cast("Sequence[ConvLSTMCell]", layer.cells)
    peer = OpenSTLConvLSTM(layer.in_channels, layer.hidden_channels, cells[0].kernel_size[0])
    peer = peer.to(cells[0].weight_ih)
    with torch.no_grad():
        for cell, theirs in zip(cells, cast("Sequence[OpenSTLCell]", peer.cells), strict=True):
            w_ih, w_hh, bias = _gate_blocks(cell)
            assert bias is None, "OpenSTL's cell has no bias"
            theirs.conv_x.weight.copy_(torch.cat(w_ih))
            theirs.conv_h.weight.copy_(torch.cat(w_hh))
    return peer


class FloorConvs(nn.Module):
    """The convolutions of a :class:`~convlstm.layers.ConvLSTM2d` stack alone, in channels-last.

    Per layer: one input convolution of all ``B*T`` frames, then per step ``t > 0`` the recurrent
    convolution of ``h`` added to the input convolution's step, normalised if the layer has
    ``norm``; ``h`` is the first ``C`` channels of that (a copy, so that backward keeps ``C``
    channels per step, as the real layer must).

    ``forward(x)``: ``(B, T, C_in, H, W)`` -> ``(B, T, C, H, W)``.
    """

    def __init__(self, layer: ConvLSTM):
        super().__init__()
        self.layer = layer  # borrows the weights and the padding rules

    def forward(self, x: Tensor) -> Tensor:
        batch, steps = x.shape[:2]
        cl = torch.channels_last
        for cell in cast("Sequence[ConvLSTMCell]", self.layer.cells):
            conv = cell.input_conv(to_channels_last(x.flatten(0, 1)))
            gates = conv.view(batch, steps, *conv.shape[1:]).unbind(1)
            channels = cell.hidden_channels
            h = _normed(cell, gates[0])[:, :channels].contiguous(memory_format=cl)
            outputs = [h]
            for t in range(1, steps):
                h = _normed(cell, cell.recurrent_conv(h).add_(gates[t]))[:, :channels]
                h = h.contiguous(memory_format=cl)
                outputs.append(h)
            x = torch.stack([o.movedim(1, -1) for o in outputs], dim=1).movedim(-1, 2)
        return x


def _normed(cell: ConvLSTMCell, gates: Tensor) -> Tensor:
    """``gates`` ``(B, 4C, H, W)`` normalised as ``cell``'s ``norm`` does (with its gain and the
    bias), or unchanged without ``norm``."""
    if cell.norm is None:
        return gates
    return F.group_norm(gates, cell.gate_groups, cell.norm_weight, cell.bias)


class KerasStack:
    """Keras 3 ``ConvLSTM2D`` layers applied in turn; ``stack(x)``: ``(B, T, H, W, C_in)`` (Keras'
    channels-last) -> ``(B, T, H, W, C)``."""

    def __init__(self, layers: list) -> None:
        self.layers = layers

    def __call__(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def parameters(self) -> list[Tensor]:
        """The torch tensors behind the Keras variables."""
        return [v.value for layer in self.layers for v in layer.trainable_variables]


def keras_from(layer: ConvLSTM, size: tuple[int, int]) -> KerasStack:
    """Keras 3 ``ConvLSTM2D`` layers (torch backend) with ``layer``'s weights (2-D, no peepholes,
    no norm, "same" padding), built for frames of spatial ``size``.

    Raises ImportError if Keras is missing, RuntimeError if its backend is not torch.
    """
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    if keras.backend.backend() != "torch":
        raise RuntimeError(f"Keras runs on {keras.backend.backend()!r}, not torch")
    layers: list[Any] = []  # keras.layers.ConvLSTM2D
    for cell in layer.cells:
        assert cell.peephole is None and cell.norm is None
        k = keras.layers.ConvLSTM2D(
            cell.hidden_channels, cell.kernel_size, padding="same", return_sequences=True
        )
        k.build((None, None, *size, cell.in_channels))
        k.set_weights(
            [
                cell.weight_ih.detach().permute(2, 3, 1, 0).cpu().numpy(),
                cell.weight_hh.detach().permute(2, 3, 1, 0).cpu().numpy(),
                cell.bias.detach().cpu().numpy(),
            ]
        )
        layers.append(k)
    return KerasStack(layers)


def to_keras_layout(x: Tensor) -> Tensor:
    """``(B, T, C, H, W)`` -> ``(B, T, H, W, C)``."""
    return x.permute(0, 1, 3, 4, 2).contiguous()


def from_keras_layout(y: Tensor) -> Tensor:
    """``(B, T, H, W, C)`` -> ``(B, T, C, H, W)``."""
    return y.permute(0, 1, 4, 2, 3)


class TorchgeoStack(nn.Module):
    """torchgeo's ``ConvLSTM`` (batch-first) returning the last layer's ``h`` at every step:
    ``forward(x)``: ``(B, T, C_in, H, W)`` -> ``(B, T, C, H, W)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        outputs, _ = self.model(x)
        return outputs[-1]


def torchgeo_from(layer: ConvLSTM) -> TorchgeoStack:
    """torchgeo 0.10.1's ``torchgeo.models.ConvLSTM`` with ``layer``'s weights (2-D, no
    peepholes, no norm, odd square kernels, stride 1, "same" padding, bias): the same function.

    torchgeo's cell convolves ``[x_t, h]`` with one ``Conv2d`` (``cell_list[i].conv``) whose
    output channels are the gates (i, f, o, g).

    Raises ImportError if torchgeo is missing.
    """
    from torchgeo.models import ConvLSTM as TorchgeoConvLSTM

    cells = cast("Sequence[ConvLSTMCell]", layer.cells)
    kernel = cells[0].kernel_size
    model = TorchgeoConvLSTM(
        input_dim=layer.in_channels,
        hidden_dim=list(layer.hidden_channels),
        kernel_size=[tuple(cell.kernel_size) for cell in cells],
        num_layers=layer.num_layers,
        batch_first=True,
        bias=True,
    ).to(cells[0].weight_ih)
    with torch.no_grad():
        for cell, theirs in zip(cells, model.cell_list, strict=True):
            assert cell.peephole is None and cell.norm is None and cell.bias is not None
            assert cell.kernel_size == kernel and all(k % 2 for k in kernel)
            weight = torch.cat([cell.weight_ih, cell.weight_hh], dim=1).chunk(4)
            bias = cell.bias.chunk(4)
            theirs.conv.weight.copy_(torch.cat([weight[g] for g in _TORCHGEO_GATES]))
            theirs.conv.bias.copy_(torch.cat([bias[g] for g in _TORCHGEO_GATES]))
    return TorchgeoStack(model)
