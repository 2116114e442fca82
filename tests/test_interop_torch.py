"""nv.interop: nn.Sequential <-> nerve with weights and buffers, and plain
state_dicts. PyTorch is the optional oracle here (skipped without torch)."""
import numpy as np
import pytest

import nerve as nv
from conftest import close_to_scale, layer_kind_models, rng

torch = pytest.importorskip("torch")
nn = torch.nn


def torch_predict(module, x):
    module.eval()
    with torch.inference_mode():
        return module(torch.from_numpy(x)).numpy()


def trained_torch(module, d_in, steps=20):
    """A few SGD steps in train mode: BatchNorm statistics move, num_batches_tracked counts."""
    torch.manual_seed(0)
    opt = torch.optim.SGD(module.parameters(), lr=0.05)
    module.train()
    for _ in range(steps):
        x = torch.randn(16, d_in)
        loss = module(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return module.eval()


ACTS = [nn.ReLU(), nn.LeakyReLU(0.2), nn.ELU(0.7), nn.SELU(), nn.GELU(), nn.GELU(approximate="tanh"),
        nn.SiLU(), nn.Sigmoid(), nn.Tanh(), nn.Softplus(beta=2.0, threshold=3.0), nn.Mish(), nn.Hardswish(),
        nn.Hardsigmoid(), nn.ReLU6(), nn.RReLU(0.1, 0.3)]


@pytest.mark.parametrize("act", ACTS, ids=lambda a: repr(a))
def test_from_torch_activations(act):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(5, 16), act, nn.Linear(16, 4), nn.LogSoftmax(dim=1))
    model = nv.interop.from_torch(net)
    assert model.input_dim == 5
    assert model.layers[0].activation.name != "identity"  # fused into the Dense
    x = rng(0).uniform(-3, 3, (40, 5)).astype(np.float32)
    close_to_scale(model.predict(x), torch_predict(net, x))


def test_from_torch_batchnorm_dropout_prelu_carries_buffers():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(6, 12), nn.BatchNorm1d(12, momentum=0.2, eps=1e-3), nn.ReLU(),
                        nn.Dropout(0.3), nn.Linear(12, 8, bias=False), nn.PReLU(8), nn.AlphaDropout(0.1),
                        nn.Sequential(nn.Linear(8, 8), nn.PReLU()), nn.BatchNorm1d(8, affine=False),
                        nn.Identity(), nn.Linear(8, 3))
    trained_torch(net, 6)
    model = nv.interop.from_torch(net, input_dim=6)
    kinds = [type(l).__name__ for l in model.layers]
    assert kinds == ["Dense", "BatchNorm", "Activation", "Dropout", "Dense", "PReLU", "AlphaDropout",
                     "Dense", "PReLU", "BatchNorm", "Dense"]
    bn = model.layers[1]
    assert (bn.momentum, bn.eps) == (0.2, 1e-3)
    np.testing.assert_array_equal(bn.running_mean, net[1].running_mean.numpy())
    np.testing.assert_array_equal(bn.running_var, net[1].running_var.numpy())
    assert bn.buffers()[2][0] == 20 == int(net[1].num_batches_tracked)
    x = rng(1).standard_normal((30, 6)).astype(np.float32)
    close_to_scale(model.predict(x), torch_predict(net, x))
    # ... and training continues with the same running-statistics update (PyTorch momentum).
    xb = rng(2).standard_normal((16, 6)).astype(np.float32)
    model.forward(xb, training=True)
    net.train()
    with torch.no_grad():
        net[0:2](torch.from_numpy(xb))
    np.testing.assert_allclose(bn.running_var, net[1].running_var.numpy(), rtol=1e-5, atol=1e-7)
    assert bn.buffers()[2][0] == 21


@pytest.mark.parametrize("label,model", layer_kind_models(), ids=lambda v: v if isinstance(v, str) else "")
def test_to_torch_and_back(label, model):
    net = nv.interop.to_torch(model)
    assert not net.training
    x = rng(3).standard_normal((25, 6)).astype(np.float32)
    want = model.predict(x)
    close_to_scale(torch_predict(net, x), want)
    back = nv.interop.from_torch(net)
    np.testing.assert_array_equal(back.predict(x), want)  # same weights, same kernels: same bits
    # Parameter-free activations (a fixed Swish included) may fuse into the Dense before them.
    kinds = lambda m: [type(l).__name__ for l in m.layers  # noqa: E731
                       if not (type(l).__name__ == "Activation" or (type(l).__name__ == "Swish" and not l.learnable))]
    assert kinds(back) == kinds(model)


def test_to_torch_activations_without_torch_modules():
    L = nv.layers
    for act, params in (("crelu", {}), ("binary_step", {}), ("swish", {"beta": 1.7}), ("softmax", {})):
        nv.manual_seed(4)
        model = nv.Sequential([L.Dense(6, activation=nv.activations.get(act, **params)), L.Dense(2)], input_dim=3)
        x = rng(5).standard_normal((10, 3)).astype(np.float32)
        net = nv.interop.to_torch(model)
        close_to_scale(torch_predict(net, x), model.predict(x))
        assert nv.interop.from_torch(net).layers[0].activation.name == act


def test_state_dict_into_matching_model():
    torch.manual_seed(5)
    net = trained_torch(nn.Sequential(nn.Linear(4, 10), nn.ReLU(), nn.BatchNorm1d(10), nn.Linear(10, 3)), 4)
    model = nv.Sequential([nv.layers.Dense(10, activation="relu"), nv.layers.BatchNorm(), nv.layers.Dense(3)],
                          input_dim=4)
    wrapped = {f"net.{k}": v for k, v in net.state_dict().items()}  # prefixes do not matter
    nv.interop.load_state_dict(model, wrapped)
    x = rng(6).standard_normal((12, 4)).astype(np.float32)
    close_to_scale(model.predict(x), torch_predict(net, x))
    np.testing.assert_array_equal(model.layers[0].kernel.value, net[0].weight.detach().numpy().T)
    # the other way: to_torch's own state_dict loads into a fresh model
    fresh = nv.Sequential([nv.layers.Dense(10, activation="relu"), nv.layers.BatchNorm(), nv.layers.Dense(3)],
                          input_dim=4)
    nv.interop.load_state_dict(fresh, {k: v.numpy() for k, v in nv.interop.to_torch(model).state_dict().items()})
    np.testing.assert_array_equal(fresh.predict(x), model.predict(x))


def test_state_dict_mismatches_change_nothing():
    model = nv.Sequential([nv.layers.Dense(3), nv.layers.Dense(2)], input_dim=4)
    before = model.get_weights()
    sd = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)).state_dict()
    bad = dict(sd)
    bad["1.weight"] = torch.zeros(2, 5)
    with pytest.raises(ValueError, match=r"1\.weight has shape \(2, 5\).*\(2, 3\)"):
        nv.interop.load_state_dict(model, bad)
    with pytest.raises(ValueError, match="modules with tensors"):
        nv.interop.load_state_dict(model, {"0.weight": sd["0.weight"], "0.bias": sd["0.bias"]})
    renamed = {k.replace("bias", "b"): v for k, v in sd.items()}
    with pytest.raises(ValueError, match="needs"):
        nv.interop.load_state_dict(model, renamed)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_from_torch_refuses_unknown_modules():
    with pytest.raises(ValueError, match=r"module 1 \(CELU\) has no nerve equivalent"):
        nv.interop.from_torch(nn.Sequential(nn.Linear(2, 2), nn.CELU()))
    with pytest.raises(ValueError, match="track_running_stats"):
        nv.interop.from_torch(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2, track_running_stats=False)))
    with pytest.raises(ValueError, match="dim"):
        nv.interop.from_torch(nn.Sequential(nn.Linear(2, 2), nn.Softmax(dim=0)))
