"""An independent float64 reference for ConvLSTM, written from the equations of Shi et al. (2015).

It shares no code with ``convlstm``: every gate has its own convolution (torch's ``padding="same"``),
normalisation is written out with means and variances, and sequences are processed one sample at a
time so that ``lengths`` and reversal are plain slicing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _normalise(z: torch.Tensor, groups: int, eps: float = 1e-5) -> torch.Tensor:
    """Group normalisation of one gate's pre-activation ``(B, C, *S)`` in ``groups`` groups."""
    b = z.shape[0]
    parts = z.reshape(b, groups, -1)
    mean = parts.mean(-1, keepdim=True)
    var = parts.var(-1, unbiased=False, keepdim=True)
    return ((parts - mean) / torch.sqrt(var + eps)).reshape(z.shape)


def cell_step(cell, x, h, c):
    """One step of ``cell``'s equations in float64. ``x (B, C_in, *S)``, ``h, c (B, C_h, *S)``."""
    conv = CONV[cell.spatial_dims]
    n = cell.hidden_channels
    x, h, c = x.double(), h.double(), c.double()

    def weight(name, gate):
        w = getattr(cell, name)
        return None if w is None else w.detach().double()[gate * n : (gate + 1) * n]

    def pre(gate):
        zx = conv(x, weight("weight_ih", gate), None, cell.stride, cell.padding, cell.dilation)
        z = zx + conv(h, weight("weight_hh", gate), None, 1, "same")
        if cell.norm is not None:
            groups = 1 if cell.norm == "layer" else cell.norm_groups
            z = _normalise(z, groups) * weight("norm_weight", gate).view(
                -1, *[1] * cell.spatial_dims
            )
        if cell.bias is not None:
            z = z + weight("bias", gate).view(-1, *[1] * cell.spatial_dims)
        return z

    def peep(name):
        w = getattr(cell, name)
        return 0.0 if w is None else w.detach().double()

    i = torch.sigmoid(pre(0) + peep("weight_ci") * c)
    f = torch.sigmoid(pre(1) + peep("weight_cf") * c)
    c_new = f * c + i * torch.tanh(pre(2))
    o = torch.sigmoid(pre(3) + peep("weight_co") * c_new)
    return o * torch.tanh(c_new), c_new


def run_direction(cell, frames, h, c):
    """Run ``cell`` over ``frames (T, C, *S)`` of one sample from state ``h, c (C_h, *S)``."""
    outputs = []
    for x in frames:
        h1, c1 = cell_step(cell, x[None], h[None], c[None])
        h, c = h1[0], c1[0]
        outputs.append(h)
    return torch.stack(outputs), (h, c)


def layer_forward(layer, x, lengths=None, state=None):
    """Reference for ``ConvLSTM.forward`` on a batch-first sequence ``x (B, T, C, *S)``.

    Returns ``output (B, T, D*C_h, *S)`` and the list of final ``(h, c)`` per layer and direction.
    """
    x = x.double()
    b, t = x.shape[:2]
    lengths = [t] * b if lengths is None else [int(v) for v in lengths]
    directions = [layer.cells] + ([layer.cells_reverse] if layer.bidirectional else [])
    outputs, finals = [], [[None] * b for _ in range(layer.num_layers * len(directions))]
    for sample in range(b):
        seq = x[sample, : lengths[sample]]
        for li in range(layer.num_layers):
            outs = []
            for d, cells in enumerate(directions):
                cell = cells[li]
                k = li * len(directions) + d
                if state is None:
                    shape = (cell.hidden_channels, *seq.shape[2:])
                    h0 = c0 = torch.zeros(shape, dtype=torch.float64)
                else:
                    h0, c0 = (s[sample].double() for s in state[k])
                inp = seq.flip(0) if d == 1 else seq
                out, final = run_direction(cell, inp, h0, c0)
                outs.append(out.flip(0) if d == 1 else out)
                finals[k][sample] = final
            seq = torch.cat(outs, dim=1)
        pad = torch.zeros((t - lengths[sample], *seq.shape[1:]), dtype=torch.float64)
        outputs.append(torch.cat([seq, pad]))
    states = [
        (torch.stack([f[0] for f in per]), torch.stack([f[1] for f in per])) for per in finals
    ]
    return torch.stack(outputs), states
