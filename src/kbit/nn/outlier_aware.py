"""OutlierAwareLinear: a Linear whose weight is quantized with knowledge of the input's outlier dims."""

from __future__ import annotations

import abc

import torch

from ..utils.outliers import OutlierTracer


class OutlierAwareLinear(torch.nn.Linear, metaclass=abc.ABCMeta):
    """Abstract: subclasses implement ``quantize_weight(w, outlier_idx)`` and ``forward_with_outliers(x, outlier_idx)``.

    The first forward asks the OutlierTracer (initialized on the model beforehand) for this weight's
    outlier dims and quantizes the weight once.
    """

    def __init__(self, input_features, output_features, bias=True, device=None):
        super().__init__(input_features, output_features, bias, device)
        self.outlier_dim = None
        self.is_quantized = False

    @abc.abstractmethod
    def forward_with_outliers(self, x: torch.Tensor, outlier_idx: torch.Tensor) -> torch.Tensor:
        """The layer's output given the input and the weight's outlier input dims."""

    @abc.abstractmethod
    def quantize_weight(self, w: torch.Tensor, outlier_idx: torch.Tensor) -> torch.Tensor:
        """The (quantized) tensor stored as the weight's data."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outlier_dim is None:
            tracer = OutlierTracer.get_instance()
            if not tracer.is_initialized():
                raise RuntimeError("kbit.nn.OutlierAwareLinear: call OutlierTracer.get_instance().initialize(model) first")
            self.outlier_dim = tracer.get_outliers(self.weight)
        if not self.is_quantized:
            self.weight.data = self.quantize_weight(self.weight, self.outlier_dim)
            self.is_quantized = True
        return self.forward_with_outliers(x, self.outlier_dim)
