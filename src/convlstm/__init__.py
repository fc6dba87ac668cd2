"""convlstm: Convolutional LSTMs (Shi et al., 2015) for spatiotemporal forecasting in PyTorch."""

from convlstm.cells import ConvLSTMCell, ConvLSTMCell1d, ConvLSTMCell2d, ConvLSTMCell3d
from convlstm.layers import ConvLSTM, ConvLSTM1d, ConvLSTM2d, ConvLSTM3d

__version__ = "0.1.0"

__all__ = [
    "ConvLSTM",
    "ConvLSTM1d",
    "ConvLSTM2d",
    "ConvLSTM3d",
    "ConvLSTMCell",
    "ConvLSTMCell1d",
    "ConvLSTMCell2d",
    "ConvLSTMCell3d",
    "__version__",
]
