"""nv.augment: shapes, determinism, exact geometry (shift, flip, rotation),
intensity formula, and fit(augment=...)."""
import numpy as np
import pytest

import nerve as nv
from nerve import augment as A


def images(n=6, h=7, w=9, c=None, seed=0):
    r = np.random.default_rng(seed)
    shape = (n, h, w) if c is None else (n, h, w, c)
    return r.random(shape).astype(np.float32)


def test_shapes_and_dtype():
    imgs = images(c=3)
    x = imgs.reshape(6, -1).astype(np.float64)
    aug = A.Compose([A.RandomShift(2), A.RandomFlip(horizontal=True, vertical=True),
                     A.RandomRotation(15), A.RandomBrightnessContrast(0.2, 0.2)], image_shape=(7, 9, 3))
    out = aug(x, rng=np.random.default_rng(0))
    assert out.shape == x.shape and out.dtype == np.float32
    assert not np.array_equal(out, x.astype(np.float32))
    with pytest.raises(ValueError, match="image_shape"):
        aug(np.zeros((2, 10), np.float32))
    with pytest.raises(ValueError, match="image_shape"):
        A.RandomShift(1)(x)
    with pytest.raises(ValueError):
        A.Compose([A.RandomShift(1)], image_shape=(0, 3))
    with pytest.raises(ValueError):
        A.RandomShift(-1)


def test_determinism():
    x = images(n=20).reshape(20, -1)
    aug = A.Compose([A.RandomShift(2), A.RandomRotation(10), A.RandomBrightnessContrast()], image_shape=(7, 9))
    a = aug(x, rng=np.random.default_rng(5))
    b = aug(x, rng=np.random.default_rng(5))
    c = aug(x, rng=np.random.default_rng(6))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    nv.manual_seed(3)
    d = aug(x)
    nv.manual_seed(3)
    assert np.array_equal(d, aug(x))
    # the input is never modified
    assert np.array_equal(x, images(n=20).reshape(20, -1))


def test_shift_moves_pixels():
    imgs = images(n=3)
    s = A.RandomShift(3, fill=-1.0)
    out = s.shift(imgs[..., None], np.array([1, -2, 0]), np.array([2, 0, -3]))[..., 0]
    expect = np.full_like(imgs, -1.0)
    expect[0, 1:, 2:] = imgs[0, :-1, :-2]      # down 1, right 2
    expect[1, :-2, :] = imgs[1, 2:, :]         # up 2
    expect[2, :, :-3] = imgs[2, :, 3:]         # left 3
    assert np.array_equal(out, expect)
    # random shifts stay within max_shift: each output equals one of the allowed shifts
    x = images(n=30)
    out = A.RandomShift(1, image_shape=(7, 9))(x.reshape(30, -1), rng=np.random.default_rng(0)).reshape(x.shape)
    for img, o in zip(x, out):
        s_fill0 = A.RandomShift(1)
        cands = [s_fill0.shift(img[None, ..., None], [dy], [dx])[0, ..., 0]
                 for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        assert any(np.array_equal(o, c) for c in cands)


def test_flip():
    x = images(n=8).reshape(8, -1)
    h = A.RandomFlip(horizontal=True, p=1.0, image_shape=(7, 9))
    once = h(x, rng=0)
    assert np.array_equal(once.reshape(8, 7, 9), x.reshape(8, 7, 9)[:, :, ::-1])
    assert np.array_equal(h(once, rng=1), x)                    # flip twice = identity
    v = A.RandomFlip(horizontal=False, vertical=True, p=1.0, image_shape=(7, 9))
    assert np.array_equal(v(x, rng=0).reshape(8, 7, 9), x.reshape(8, 7, 9)[:, ::-1])
    # p = 0.5: some images flipped, some not, each one exactly one of the two
    xs = images(n=200).reshape(200, -1)
    out = A.RandomFlip(p=0.5, image_shape=(7, 9))(xs, rng=0).reshape(200, 7, 9)
    flipped = np.array([np.array_equal(o, i[:, ::-1]) for o, i in zip(out, xs.reshape(200, 7, 9))])
    kept = np.array([np.array_equal(o, i) for o, i in zip(out, xs.reshape(200, 7, 9))])
    assert np.all(flipped | kept) and 70 < flipped.sum() < 130


def test_rotation():
    x = images(n=5, h=8, w=8).reshape(5, -1)
    rot = A.RandomRotation(0.0, image_shape=(8, 8))
    assert np.array_equal(rot(x, rng=0), x)                     # 0 degrees = identity, exactly
    imgs = x.reshape(5, 8, 8, 1)
    r = A.RandomRotation(90)
    # 90° steps are exact permutations (up to the floating error of cos(90°))
    out90 = r.rotate(imgs, np.full(5, 90.0))[..., 0]
    np.testing.assert_allclose(out90, np.rot90(imgs[..., 0], k=1, axes=(1, 2)), atol=1e-5)
    out180 = r.rotate(imgs, np.full(5, 180.0))[..., 0]
    np.testing.assert_allclose(out180, imgs[:, ::-1, ::-1, 0], atol=1e-5)
    # small angles move mass little and keep a centred blob's total nearly unchanged
    blob = np.zeros((1, 15, 15, 1), np.float32)
    blob[0, 5:10, 5:10] = 1
    small = r.rotate(blob, [10.0])
    assert abs(small.sum() - blob.sum()) < 0.5 and small[0, 7, 7, 0] == pytest.approx(1.0)
    # angles are bounded by `degrees`: a 5° rotation never equals a 30° one
    rot5 = A.RandomRotation(5, image_shape=(15, 15))(blob.reshape(1, -1), rng=0)
    assert np.abs(rot5 - r.rotate(blob, [30.0]).reshape(1, -1)).max() > 0.1


def test_brightness_contrast_formula():
    x = images(n=4).reshape(4, -1)
    t = A.RandomBrightnessContrast(brightness=0.3, contrast=0.5, image_shape=(7, 9))
    out = t(x, rng=np.random.default_rng(9))
    g = np.random.default_rng(9)
    c = g.uniform(0.5, 1.5, size=4)
    d = g.uniform(-0.3, 0.3, size=4)
    m = x.mean(axis=1, keepdims=True)
    np.testing.assert_allclose(out, (x - m) * c[:, None] + m + d[:, None], rtol=1e-5, atol=1e-6)
    clipped = A.RandomBrightnessContrast(1.0, 0.9, clip=(0, 1), image_shape=(7, 9))(x, rng=1)
    assert clipped.min() >= 0 and clipped.max() <= 1


def test_fit_with_augment_is_seeded_and_leaves_labels():
    r = np.random.default_rng(0)
    x = r.random((96, 36)).astype(np.float32)
    y = (x.reshape(96, 6, 6)[:, :3].sum(axis=(1, 2)) > x.reshape(96, 6, 6)[:, 3:].sum(axis=(1, 2))).astype(np.int64)
    aug = A.Compose([A.RandomShift(1), A.RandomFlip(horizontal=True)], image_shape=(6, 6))
    seen = []

    class Recorder(A.Transform):
        def apply(self, imgs, rng):
            seen.append(imgs.copy())
            return imgs

    def run(augment, seed):
        nv.manual_seed(1)
        m = nv.Sequential([nv.layers.Dense(16, activation="tanh"), nv.layers.Dense(2)], input_dim=36)
        m.compile(optimizer="adam", loss="cross_entropy")
        h = m.fit(x, y, epochs=2, batch_size=16, verbose=0, seed=seed, augment=augment)
        return m.get_weights(), h.history["loss"]

    w1, l1 = run(aug, 0)
    w2, l2 = run(aug, 0)
    w3, l3 = run(aug, 1)
    w0, l0 = run(None, 0)
    assert l1 == l2 and all(np.array_equal(a, b) for a, b in zip(w1, w2))
    assert l1 != l3 and l1 != l0
    # every batch is augmented separately: 6 batches x 2 epochs of 16 rows
    run(A.Compose([Recorder()], image_shape=(6, 6)), 0)
    assert len(seen) == 12 and all(s.shape == (16, 6, 6, 1) for s in seen)
    # an identity augmentation trains exactly like no augmentation
    wi, li = run(A.Compose([A.RandomRotation(0.0)], image_shape=(6, 6)), 0)
    assert li == l0 and all(np.array_equal(a, b) for a, b in zip(wi, w0))
    # the data given to fit is not modified
    assert np.array_equal(x, np.random.default_rng(0).random((96, 36)).astype(np.float32))
    nv.manual_seed(1)
    m = nv.Sequential([nv.layers.Dense(2)], input_dim=36)
    m.compile(optimizer="adam", loss="cross_entropy")
    with pytest.raises(ValueError, match="36 features"):
        m.fit(x, y, augment=A.Compose([A.RandomShift(1)], image_shape=(5, 5)), verbose=0)
    with pytest.raises(ValueError, match="shape"):
        m.fit(x, y, augment=lambda xb, rng: xb[:, :3], verbose=0)


def test_augmented_run_does_not_depend_on_call_grouping():
    # Each batch draws from its own generator: one C++ call per epoch or per
    # batch (a per-batch callback) gives the same augmented run.
    r = np.random.default_rng(0)
    x = r.random((80, 25)).astype(np.float32)
    y = r.integers(0, 2, size=80).astype(np.int64)
    aug = A.Compose([A.RandomShift(1), A.RandomRotation(20)], image_shape=(5, 5))

    class PerBatch(nv.callbacks.Callback):
        def on_batch_end(self, batch, logs=None):
            pass

    out = []
    for cbs in ([], [PerBatch()]):
        nv.manual_seed(2)
        m = nv.Sequential([nv.layers.Dense(8, activation="tanh"), nv.layers.Dense(2)], input_dim=25)
        m.compile(optimizer="adam", loss="cross_entropy")
        h = m.fit(x, y, epochs=2, batch_size=16, verbose=0, seed=3, augment=aug, callbacks=cbs)
        out.append((h.history["loss"], m.get_weights()))
    assert out[0][0] == out[1][0]
    assert all(np.array_equal(a, b) for a, b in zip(out[0][1], out[1][1]))
