"""On-the-fly data augmentation for image-shaped inputs stored as flat rows.

A transform takes a (batch, features) float array whose rows are images of a
known shape — ``(height, width)`` or channels-last ``(height, width,
channels)`` — and returns augmented rows of the same shape. Every image draws
its own random parameters; all work is whole-batch numpy (no per-pixel
Python loops). Labels are never touched::

    aug = nv.augment.Compose([nv.augment.RandomShift(2),
                              nv.augment.RandomFlip(horizontal=True),
                              nv.augment.RandomRotation(10),
                              nv.augment.RandomBrightnessContrast(0.1, 0.1)],
                             image_shape=(28, 28))
    model.fit(x, y, augment=aug, seed=0)      # seeded: same seed, same run
    x_aug = aug(x_batch, rng=np.random.default_rng(0))

Called without ``rng``, a transform draws from a generator keyed by the
global seed (``nv.manual_seed``). In ``fit`` every batch gets a generator
keyed by (fit seed, epoch, batch), so runs are reproducible.

References: Simard, Steinkraus & Platt, "Best practices for convolutional
neural networks applied to visual document analysis" (ICDAR 2003);
Krizhevsky, Sutskever & Hinton (2012) for flips and intensity changes.
"""
import math

import numpy as np

from . import _random


def _generator(rng):
    if rng is None:
        return np.random.default_rng(list(_random.next_key()))
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool) and rng >= 0:
        return np.random.default_rng(int(rng))
    raise ValueError(f"rng must be a numpy Generator, a non-negative int seed or None, got {rng!r}")


def _check_shape(image_shape):
    if image_shape is None:
        return None
    shape = tuple(image_shape)
    if len(shape) not in (2, 3) or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool)
                                            and s > 0 for s in shape):
        raise ValueError(f"image_shape must be (height, width) or (height, width, channels) of positive "
                         f"ints, got {image_shape!r}")
    return tuple(int(s) for s in shape)


def _number(name, value, low=0.0, high=math.inf):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not low <= value <= high:
        raise ValueError(f"{name} must be a number in [{low}, {high}], got {value!r}")
    return float(value)


class Transform:
    """Base class. ``transform(x, rng=None)`` maps (batch, features) rows to
    augmented rows of the same shape and dtype (float32 out).

    Subclasses implement ``apply(images, rng)`` on a (batch, H, W, C) float32
    array. ``image_shape`` may be given here or by an enclosing Compose.
    """

    def __init__(self, image_shape=None):
        self.image_shape = _check_shape(image_shape)

    def check_input_dim(self, features):
        """Raises ValueError unless rows of `features` values are images of image_shape."""
        if self.image_shape is None:
            raise ValueError(f"{type(self).__name__} needs image_shape=(height, width[, channels]) "
                             f"to interpret flat rows as images")
        size = int(np.prod(self.image_shape))
        if size != features:
            raise ValueError(f"{type(self).__name__}: image_shape {self.image_shape} has {size} values, "
                             f"but rows have {features} features")

    def __call__(self, x, rng=None):
        arr = np.asarray(x)
        if arr.ndim != 2 or arr.dtype.kind not in "fiu":
            raise ValueError(f"augment: expected a numeric (batch, features) array, got shape {arr.shape} "
                             f"dtype {arr.dtype}")
        self.check_input_dim(arr.shape[1])
        h, w = self.image_shape[:2]
        c = self.image_shape[2] if len(self.image_shape) == 3 else 1
        images = np.array(arr, dtype=np.float32).reshape(arr.shape[0], h, w, c)
        out = self.apply(images, _generator(rng))
        return np.ascontiguousarray(out, dtype=np.float32).reshape(arr.shape)

    def apply(self, images, rng):
        raise NotImplementedError

    def __repr__(self):
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k != "image_shape")
        return f"{type(self).__name__}({fields})"


class Compose(Transform):
    """Applies `transforms` in order to every batch (each with its own random draws)."""

    def __init__(self, transforms, image_shape=None):
        super().__init__(image_shape)
        transforms = list(transforms)
        for t in transforms:
            if not isinstance(t, Transform):
                raise ValueError(f"Compose takes nv.augment transforms, got {type(t).__name__}")
        self.transforms = transforms
        if self.image_shape is None:
            shapes = {t.image_shape for t in transforms if t.image_shape is not None}
            if len(shapes) == 1:
                self.image_shape = shapes.pop()

    def apply(self, images, rng):
        for t in self.transforms:
            images = t.apply(images, rng)
        return images


def _gather(images, rows, cols, fill):
    """images[b, rows[b, i, j], cols[b, i, j], :] with `fill` where an index is outside."""
    b, h, w, _ = images.shape
    inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    r = np.clip(rows, 0, h - 1)
    c = np.clip(cols, 0, w - 1)
    out = images[np.arange(b)[:, None, None], r, c]
    return np.where(inside[..., None], out, np.float32(fill))


class RandomShift(Transform):
    """Moves each image by whole pixels: dy, dx uniform integers in
    [−max_shift, max_shift] (``max_shift`` an int, or a pair (rows, cols)).
    out[i, j] = in[i − dy, j − dx]; vacated pixels take `fill`."""

    def __init__(self, max_shift=2, fill=0.0, image_shape=None):
        super().__init__(image_shape)
        pair = max_shift if isinstance(max_shift, (tuple, list)) else (max_shift, max_shift)
        if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0
                                     for v in pair):
            raise ValueError(f"max_shift must be an int >= 0 or a pair of them, got {max_shift!r}")
        self.max_shift = (int(pair[0]), int(pair[1]))
        self.fill = _number("fill", fill, -math.inf, math.inf)

    def apply(self, images, rng):
        b, h, w, _ = images.shape
        my, mx = self.max_shift
        dy = rng.integers(-my, my + 1, size=b)
        dx = rng.integers(-mx, mx + 1, size=b)
        return self.shift(images, dy, dx)

    def shift(self, images, dy, dx):
        """Deterministic shift of each image by (dy[b], dx[b]) pixels."""
        b, h, w, _ = images.shape
        rows = np.arange(h)[None, :, None] - np.asarray(dy)[:, None, None]
        cols = np.arange(w)[None, None, :] - np.asarray(dx)[:, None, None]
        rows, cols = np.broadcast_arrays(rows, cols)
        return _gather(images, rows, cols, self.fill)


class RandomFlip(Transform):
    """Mirrors each image left-right (horizontal) and/or top-bottom
    (vertical), each with probability `p`."""

    def __init__(self, horizontal=True, vertical=False, p=0.5, image_shape=None):
        super().__init__(image_shape)
        if not (horizontal or vertical):
            raise ValueError("RandomFlip needs horizontal=True or vertical=True")
        self.horizontal, self.vertical = bool(horizontal), bool(vertical)
        self.p = _number("p", p, 0.0, 1.0)

    def apply(self, images, rng):
        out = images
        b = images.shape[0]
        if self.horizontal:
            flip = rng.random(b) < self.p
            out = np.where(flip[:, None, None, None], out[:, :, ::-1], out)
        if self.vertical:
            flip = rng.random(b) < self.p
            out = np.where(flip[:, None, None, None], out[:, ::-1], out)
        return out


class RandomRotation(Transform):
    """Rotates each image about its centre by an angle uniform in
    [−degrees, degrees], with bilinear interpolation; pixels that come from
    outside the image take `fill`. An angle of 0 returns the image exactly."""

    def __init__(self, degrees=10.0, fill=0.0, image_shape=None):
        super().__init__(image_shape)
        self.degrees = _number("degrees", degrees, 0.0, 180.0)
        self.fill = _number("fill", fill, -math.inf, math.inf)

    def apply(self, images, rng):
        angles = rng.uniform(-self.degrees, self.degrees, size=images.shape[0])
        return self.rotate(images, angles)

    def rotate(self, images, degrees):
        """Deterministic rotation of each image by degrees[b] (counter-clockwise on screen)."""
        b, h, w, _ = images.shape
        theta = np.deg2rad(np.asarray(degrees, dtype=np.float64))
        cos, sin = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
        cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
        yy, xx = np.meshgrid(np.arange(h) - cy, np.arange(w) - cx, indexing="ij")
        # Inverse map: the source of output pixel p is R(−θ) p (rows grow downwards).
        src_x = cos * xx - sin * yy + cx
        src_y = sin * xx + cos * yy + cy
        x0 = np.floor(src_x)
        y0 = np.floor(src_y)
        fx = (src_x - x0).astype(np.float32)[..., None]
        fy = (src_y - y0).astype(np.float32)[..., None]
        x0 = x0.astype(np.int64)
        y0 = y0.astype(np.int64)
        v00 = _gather(images, y0, x0, self.fill)
        v01 = _gather(images, y0, x0 + 1, self.fill)
        v10 = _gather(images, y0 + 1, x0, self.fill)
        v11 = _gather(images, y0 + 1, x0 + 1, self.fill)
        top = np.where(fx == 0, v00, v00 * (1 - fx) + v01 * fx)
        bottom = np.where(fx == 0, v10, v10 * (1 - fx) + v11 * fx)
        return np.where(fy == 0, top, top * (1 - fy) + bottom * fy)


class RandomBrightnessContrast(Transform):
    """x' = (x − m)·c + m + δ per image, m its mean intensity, c uniform in
    [1 − contrast, 1 + contrast], δ uniform in [−brightness, brightness]
    (in input units); clipped to `clip` = (low, high) when given."""

    def __init__(self, brightness=0.1, contrast=0.1, clip=None, image_shape=None):
        super().__init__(image_shape)
        self.brightness = _number("brightness", brightness)
        self.contrast = _number("contrast", contrast, 0.0, 1.0)
        if clip is not None:
            if not (isinstance(clip, (tuple, list)) and len(clip) == 2 and clip[0] <= clip[1]):
                raise ValueError(f"clip must be (low, high) with low <= high, got {clip!r}")
            clip = (float(clip[0]), float(clip[1]))
        self.clip = clip

    def apply(self, images, rng):
        b = images.shape[0]
        c = rng.uniform(1 - self.contrast, 1 + self.contrast, size=b).astype(np.float32)[:, None, None, None]
        d = rng.uniform(-self.brightness, self.brightness, size=b).astype(np.float32)[:, None, None, None]
        m = images.mean(axis=(1, 2, 3), keepdims=True, dtype=np.float64).astype(np.float32)
        out = (images - m) * c + m + d
        if self.clip is not None:
            out = np.clip(out, self.clip[0], self.clip[1])
        return out


__all__ = ["Transform", "Compose", "RandomShift", "RandomFlip", "RandomRotation", "RandomBrightnessContrast"]
