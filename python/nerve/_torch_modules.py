"""torch.nn modules for the nerve layers PyTorch has no module for (used by
``nv.interop.to_torch`` and read back by ``from_torch``). Imports torch:
only ``nv.interop`` loads this module, and only when torch is used."""
import torch
from torch import nn


class CReLU(nn.Module):
    """[relu(x), relu(-x)] along the features (doubles the width)."""

    def forward(self, x):
        return torch.cat([torch.relu(x), torch.relu(-x)], dim=-1)


class BinaryStep(nn.Module):
    """1 where x >= 0, else 0. Gradient 0, or dy passed through with
    straight_through=True (the straight-through estimator)."""

    def __init__(self, straight_through=False):
        super().__init__()
        self.straight_through = bool(straight_through)

    def forward(self, x):
        y = (x >= 0).to(x.dtype)
        if self.straight_through:
            return x + (y - x).detach()
        return y

    def extra_repr(self):
        return f"straight_through={self.straight_through}"


class Swish(nn.Module):
    """x · sigmoid(β x); β a learned scalar parameter when learnable."""

    def __init__(self, beta=1.0, learnable=False):
        super().__init__()
        self.learnable = bool(learnable)
        if self.learnable:
            self.beta = nn.Parameter(torch.tensor([float(beta)]))
        else:
            self.register_buffer("beta", torch.tensor([float(beta)]), persistent=False)

    def forward(self, x):
        return x * torch.sigmoid(self.beta * x)

    def extra_repr(self):
        return f"learnable={self.learnable}"


class Maxout(nn.Module):
    """Linear to units·pieces columns, then the max over each unit's
    consecutive `pieces` columns (nerve's grouping)."""

    def __init__(self, in_features, units, pieces, bias=True):
        super().__init__()
        self.units, self.pieces = int(units), int(pieces)
        self.linear = nn.Linear(in_features, self.units * self.pieces, bias=bias)

    def forward(self, x):
        z = self.linear(x)
        return z.reshape(*z.shape[:-1], self.units, self.pieces).amax(dim=-1)

    def extra_repr(self):
        return f"units={self.units}, pieces={self.pieces}"


class GaussianNoise(nn.Module):
    """Adds N(0, stddev²) noise in training mode; identity in eval."""

    def __init__(self, stddev):
        super().__init__()
        self.stddev = float(stddev)

    def forward(self, x):
        if self.training and self.stddev > 0:
            return x + self.stddev * torch.randn_like(x)
        return x

    def extra_repr(self):
        return f"stddev={self.stddev}"


class Residual(nn.Module):
    """y = x + body(x)."""

    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):
        return x + self.body(x)


CUSTOM = (CReLU, BinaryStep, Swish, Maxout, GaussianNoise, Residual)
