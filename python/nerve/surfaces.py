"""2-D test functions for watching optimizers move.

Each surface is a :class:`Surface` with ``f(xy)`` and ``grad(xy)`` for arrays
of points of shape ``(..., 2)`` (computed in float64; ``f`` returns shape
``(...)``, ``grad`` the same shape as ``xy``), its known ``minima`` (shape
``(k, 2)``, empty for the saddle), the value at a minimum (``f_min``), a
suggested ``start`` and a plot ``window`` ``((xmin, xmax), (ymin, ymax))``::

    s = nv.surfaces.beale
    p = nv.Parameter(s.start)
    opt = nv.optimizers.Adam([p], lr=0.05)
    for _ in range(500):
        p.grad[...] = s.grad(p.value); opt.step()

References: Rosenbrock (1960); Beale (1958); Himmelblau (1972), *Applied
Nonlinear Programming*; the saddle and the ravine are the two pictures of
Géron's chapter 11 / Ruder (2016), "An overview of gradient descent
optimization algorithms" (arXiv:1609.04747).
"""
import numpy as np

__all__ = ["Surface", "rosenbrock", "beale", "himmelblau", "saddle", "ravine", "ALL"]


def _points(xy):
    a = np.asarray(xy, dtype=np.float64)
    if a.ndim == 0 or a.shape[-1] != 2:
        raise ValueError(f"expected points of shape (..., 2), got shape {a.shape}")
    return a[..., 0], a[..., 1]


class Surface:
    """A 2-D function with its gradient, minima, a start point and a window."""

    def __init__(self, name, f, grad, minima, f_min, start, window, saddle_points=(), description=""):
        self.name = name
        self._f = f
        self._grad = grad
        self.minima = np.asarray(minima, dtype=np.float64).reshape(-1, 2)
        self.f_min = f_min
        self.start = np.asarray(start, dtype=np.float64)
        self.window = tuple(tuple(float(v) for v in w) for w in window)
        self.saddle_points = np.asarray(saddle_points, dtype=np.float64).reshape(-1, 2)
        self.description = description

    def f(self, xy):
        """Function values, shape xy.shape[:-1]."""
        x, y = _points(xy)
        return self._f(x, y)

    def grad(self, xy):
        """Gradient, same shape as xy (float64)."""
        x, y = _points(xy)
        gx, gy = self._grad(x, y)
        return np.stack(np.broadcast_arrays(gx, gy), axis=-1)

    def distance_to_minimum(self, xy):
        """Distance from each point to the nearest known minimum (inf without minima)."""
        x, y = _points(xy)
        if len(self.minima) == 0:
            return np.full(np.shape(x), np.inf)
        d = np.stack([np.hypot(x - mx, y - my) for mx, my in self.minima])
        return d.min(axis=0)

    def grid(self, n=200):
        """(X, Y, F) on an n×n grid over the window, for contour plots."""
        (x0, x1), (y0, y1) = self.window
        X, Y = np.meshgrid(np.linspace(x0, x1, n), np.linspace(y0, y1, n))
        return X, Y, self.f(np.stack([X, Y], axis=-1))

    def __repr__(self):
        return f"<surface {self.name}: {self.description}>"


# Rosenbrock's banana: f = (1 − x)² + 100(y − x²)², minimum 0 at (1, 1) at
# the end of a long curved valley.
rosenbrock = Surface(
    "rosenbrock",
    lambda x, y: (1.0 - x) ** 2 + 100.0 * (y - x * x) ** 2,
    lambda x, y: (-2.0 * (1.0 - x) - 400.0 * x * (y - x * x), 200.0 * (y - x * x)),
    minima=[(1.0, 1.0)], f_min=0.0, start=(-1.5, 2.0), window=((-2.0, 2.0), (-1.0, 3.0)),
    description="(1 - x)^2 + 100 (y - x^2)^2")


def _beale_f(x, y):
    return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y ** 2) ** 2 + (2.625 - x + x * y ** 3) ** 2


def _beale_grad(x, y):
    t1, t2, t3 = 1.5 - x + x * y, 2.25 - x + x * y ** 2, 2.625 - x + x * y ** 3
    gx = 2.0 * (t1 * (y - 1.0) + t2 * (y ** 2 - 1.0) + t3 * (y ** 3 - 1.0))
    gy = 2.0 * x * (t1 + 2.0 * t2 * y + 3.0 * t3 * y ** 2)
    return gx, gy


# Beale: flat plateaus and steep walls, minimum 0 at (3, 0.5).
beale = Surface("beale", _beale_f, _beale_grad, minima=[(3.0, 0.5)], f_min=0.0, start=(0.7, 1.4),
                window=((-0.5, 4.0), (-1.0, 2.0)),
                description="(1.5 - x + xy)^2 + (2.25 - x + xy^2)^2 + (2.625 - x + xy^3)^2")

# Himmelblau: four minima of value 0 (to 6 decimals for the irrational ones).
himmelblau = Surface(
    "himmelblau",
    lambda x, y: (x * x + y - 11.0) ** 2 + (x + y * y - 7.0) ** 2,
    lambda x, y: (4.0 * x * (x * x + y - 11.0) + 2.0 * (x + y * y - 7.0),
                  2.0 * (x * x + y - 11.0) + 4.0 * y * (x + y * y - 7.0)),
    minima=[(3.0, 2.0), (-2.805118, 3.131312), (-3.779310, -3.283186), (3.584428, -1.848126)],
    f_min=0.0, start=(0.0, -0.5), window=((-5.0, 5.0), (-5.0, 5.0)),
    description="(x^2 + y - 11)^2 + (x + y^2 - 7)^2")

# The saddle x² − y²: zero gradient at the origin, unbounded below along y.
# Started almost on the x axis, plain gradient descent crawls towards the
# saddle point before the tiny y component grows; momentum and adaptive
# methods escape sooner.
saddle = Surface(
    "saddle",
    lambda x, y: x * x - y * y,
    lambda x, y: (2.0 * x, -2.0 * y),
    minima=np.zeros((0, 2)), f_min=-np.inf, start=(1.0, 1e-3), window=((-1.5, 1.5), (-1.5, 1.5)),
    saddle_points=[(0.0, 0.0)], description="x^2 - y^2")

# A ravine: the axis-aligned quadratic x² + 100y² (condition number 100).
# Plain SGD must use a step small enough for the steep y direction and then
# crawls along x; momentum and per-coordinate rates fix that.
ravine = Surface(
    "ravine",
    lambda x, y: x * x + 100.0 * y * y,
    lambda x, y: (2.0 * x, 200.0 * y),
    minima=[(0.0, 0.0)], f_min=0.0, start=(-9.0, 0.9), window=((-10.0, 10.0), (-1.2, 1.2)),
    description="x^2 + 100 y^2")

ALL = {s.name: s for s in (rosenbrock, beale, himmelblau, saddle, ravine)}
