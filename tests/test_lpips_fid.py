"""LPIPS and FID-Inception in Flax against PyTorch references built from torch.nn.

torchvision is not available, so the reference networks are rebuilt here with the
module names of the official files (torchvision `vgg16().features`, LPIPS
`lin<k>.model.1`, pytorch-fid's FID Inception blocks). Their random weights go
through the official key layout into our converters; the Flax outputs must match
the PyTorch outputs.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional
nn = torch.nn

import jax  # noqa: E402

from lama_jax import eval_weights  # noqa: E402
from lama_jax.models import inception, lpips  # noqa: E402

torch.manual_seed(0)


def _numpy_state(module):
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def _relative_error(actual, expected):
    return np.max(np.abs(np.asarray(actual) - expected)) / np.max(np.abs(expected))


# ----------------------------------------------------------------------------- LPIPS


class NetLinLayer(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))
        nn.init.uniform_(self.model[1].weight, 0.0, 0.1)  # learned heads are non-negative

    def forward(self, x):
        return self.model(x)


class TorchLPIPS(nn.Module):
    """torchvision VGG16 features (indices 0-29) + LPIPS v0.1 net-lin heads, as in LaMa's lpips.py."""

    def __init__(self):
        super().__init__()
        layers, in_ch = [], 3
        for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(in_ch, v, 3, padding=1), nn.ReLU()]
                in_ch = v
        self.features = nn.Sequential(*layers)
        for k, ch in enumerate([64, 128, 256, 512, 512]):
            setattr(self, f"lin{k}", NetLinLayer(ch))
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])

    def taps(self, x):
        outs = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in (3, 8, 15, 22, 29):  # relu1_2 ... relu5_3
                outs.append(x)
        return outs

    def forward(self, a, b):  # NCHW in [0, 1]
        a, b = [((2 * x - 1) - self.shift) / self.scale for x in (a, b)]
        total = 0
        for k, (fa, fb) in enumerate(zip(self.taps(a), self.taps(b))):
            fa = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            fb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + getattr(self, f"lin{k}")((fa - fb) ** 2).mean([2, 3], keepdim=True)
        return total.flatten()


def _lpips_states(model):
    state = _numpy_state(model)
    vgg_state = {k: v for k, v in state.items() if k.startswith("features.")}
    # torchvision's file also holds the classifier, which LPIPS ignores.
    vgg_state["classifier.0.weight"] = np.zeros((4, 4), np.float32)
    lpips_state = {k: v for k, v in state.items() if k.startswith("lin")}
    return vgg_state, lpips_state


@pytest.fixture(scope="module")
def torch_lpips():
    return TorchLPIPS().eval()


def test_lpips_state_dict_uses_the_official_keys(torch_lpips):
    vgg_state, lpips_state = _lpips_states(torch_lpips)
    assert sorted(lpips_state) == [f"lin{k}.model.1.weight" for k in range(5)]
    assert lpips_state["lin3.model.1.weight"].shape == (1, 512, 1, 1)
    conv_indices = sorted({int(k.split(".")[1]) for k in vgg_state if k.startswith("features.")})
    assert conv_indices == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]


def test_lpips_matches_torch(torch_lpips):
    vgg_state, lpips_state = _lpips_states(torch_lpips)
    variables = eval_weights.convert_lpips(vgg_state, lpips_state)
    rng = np.random.default_rng(0)
    a = rng.random((2, 48, 64, 3), dtype=np.float32)
    b = np.clip(a + 0.2 * rng.standard_normal(a.shape).astype(np.float32), 0, 1)
    with torch.no_grad():
        expected = torch_lpips(*(torch.from_numpy(x.transpose(0, 3, 1, 2)) for x in (a, b))).numpy()
    actual = jax.jit(lpips.lpips_distance)(variables, a, b)
    assert actual.shape == (2,)
    assert _relative_error(actual, expected) < 1e-4
    assert np.all(np.asarray(lpips.lpips_distance(variables, a, a)) == 0)


def test_lpips_converter_reports_missing_unexpected_and_misshapen_keys(torch_lpips):
    vgg_state, lpips_state = _lpips_states(torch_lpips)
    broken_vgg = dict(vgg_state)
    del broken_vgg["features.7.bias"]
    broken_vgg["features.5.weight"] = broken_vgg["features.5.weight"][:, :32]
    with pytest.raises(ValueError) as err:
        eval_weights.convert_lpips(broken_vgg, lpips_state, vgg_source="vgg16.pth")
    message = str(err.value)
    assert "'vgg16.pth'" in message and "missing keys (1): features.7.bias" in message
    assert "features.5.weight: file has (128, 32, 3, 3), expected (128, 64, 3, 3)" in message

    extra = dict(lpips_state, **{"lin5.model.1.weight": np.zeros((1, 8, 1, 1), np.float32)})
    with pytest.raises(ValueError, match=r"unexpected keys \(1\): lin5.model.1.weight"):
        eval_weights.convert_lpips(vgg_state, extra)


# ----------------------------------------------------------------------------- Inception


class BasicConv2d(nn.Module):
    def __init__(self, cin, cout, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_exclude_pad(x):
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin, pool_features):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x):
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch5x5_2(self.branch5x5_1(x)),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                self.branch_pool(_avg_pool_exclude_pad(x)),
            ],
            1,
        )


class InceptionB(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        return torch.cat(
            [
                self.branch3x3(x),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                F.max_pool2d(x, 3, stride=2),
            ],
            1,
        )


class InceptionC(nn.Module):
    def __init__(self, cin, c7):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        dbl = x
        for i in range(1, 6):
            dbl = getattr(self, f"branch7x7dbl_{i}")(dbl)
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
                dbl,
                self.branch_pool(_avg_pool_exclude_pad(x)),
            ],
            1,
        )


class InceptionD(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b7 = x
        for i in range(1, 5):
            b7 = getattr(self, f"branch7x7x3_{i}")(b7)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    def __init__(self, cin, max_pool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool_exclude_pad(x)
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch3x3_2a(b3),
                self.branch3x3_2b(b3),
                self.branch3x3dbl_3a(dbl),
                self.branch3x3dbl_3b(dbl),
                self.branch_pool(pooled),
            ],
            1,
        )


class TorchFIDInception(nn.Module):
    """pytorch-fid's FID InceptionV3 (torchvision names, 1008-class fc kept as in the weights file)."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, 32)
        self.Mixed_5c = InceptionA(256, 64)
        self.Mixed_5d = InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, 128)
        self.Mixed_6c = InceptionC(768, 160)
        self.Mixed_6d = InceptionC(768, 160)
        self.Mixed_6e = InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):  # random statistics exercise every BN field
                for tensor, low, high in ((m.weight, 0.5, 1.5), (m.bias, -0.2, 0.2), (m.running_var, 0.5, 2.0)):
                    nn.init.uniform_(tensor, low, high)
                nn.init.uniform_(m.running_mean, -0.2, 0.2)

    def forward(self, x):  # NCHW in [0, 1] -> (N, 2048)
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean([2, 3])


@pytest.fixture(scope="module")
def torch_inception():
    return TorchFIDInception().eval()


def test_inception_state_dict_uses_the_official_keys(torch_inception):
    state = torch_inception.state_dict()
    for key in (
        "Conv2d_1a_3x3.conv.weight",
        "Conv2d_1a_3x3.bn.running_var",
        "Mixed_5b.branch1x1.conv.weight",
        "Mixed_6e.branch7x7dbl_5.bn.bias",
        "Mixed_7c.branch3x3dbl_3b.conv.weight",
        "fc.weight",
    ):
        assert key in state
    assert state["Mixed_6b.branch7x7_2.conv.weight"].shape == (128, 128, 1, 7)


def test_inception_features_match_torch(torch_inception):
    variables = eval_weights.convert_inception(_numpy_state(torch_inception))
    # 200x240 is upsampled to 299 (the usual case: 256 crops) through the same resize as PyTorch.
    images = np.random.default_rng(1).random((2, 200, 240, 3), dtype=np.float32)
    with torch.no_grad():
        expected = torch_inception(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    actual = jax.jit(inception.inception_features)(variables, images)
    assert actual.shape == (2, 2048)
    assert _relative_error(actual, expected) < 1e-4


@pytest.mark.parametrize("size", [(64, 80), (256, 256), (512, 384)])
def test_resize_matches_torch_bilinear_without_antialias(size):
    images = np.random.default_rng(2).random((1, *size, 3), dtype=np.float32)
    expected = F.interpolate(
        torch.from_numpy(images.transpose(0, 3, 1, 2)), size=(299, 299), mode="bilinear", align_corners=False
    ).numpy()
    actual = np.asarray(inception.resize_bilinear(images)).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=2e-6)


def test_inception_converter_ignores_classifier_and_counters_but_reports_errors(torch_inception):
    state = _numpy_state(torch_inception)
    state["Mixed_5b.branch1x1.bn.num_batches_tracked"] = np.array(0)
    eval_weights.convert_inception(state)  # fc.* and num_batches_tracked are not needed

    broken = dict(state)
    del broken["Mixed_7b.branch_pool.bn.running_mean"]
    broken["Conv2d_1a_3x3.conv.weight"] = np.zeros((32, 3, 5, 5), np.float32)
    broken["Mixed_8a.branch1x1.conv.weight"] = np.zeros((1, 1, 1, 1), np.float32)
    with pytest.raises(ValueError) as err:
        eval_weights.convert_inception(broken, source="pt_inception.pth")
    message = str(err.value)
    assert "'pt_inception.pth'" in message
    assert "missing keys (1): Mixed_7b.branch_pool.bn.running_mean" in message
    assert "unexpected keys (1): Mixed_8a.branch1x1.conv.weight" in message
    assert "Conv2d_1a_3x3.conv.weight: file has (32, 3, 5, 5), expected (32, 3, 3, 3)" in message


# ----------------------------------------------------------------------------- weights files


@pytest.mark.parametrize(
    "weights", [eval_weights.LPIPS_HEADS, eval_weights.VGG16_IMAGENET, eval_weights.FID_INCEPTION]
)
def test_missing_weights_file_names_the_file_and_its_source(tmp_path, weights):
    with pytest.raises(FileNotFoundError) as err:
        eval_weights.require_weights_file(tmp_path / "absent.pth", weights)
    message = str(err.value)
    assert weights.filename in message and weights.url in message and weights.flag in message
    assert "absent.pth" in message


def test_loaders_read_files_written_by_torch(tmp_path, torch_lpips, torch_inception):
    pytest.importorskip("lama_jax.torch_pickle")
    vgg_state, lpips_state = _lpips_states(torch_lpips)
    torch.save({k: torch.from_numpy(v) for k, v in vgg_state.items()}, tmp_path / "vgg16-397923af.pth")
    torch.save({k: torch.from_numpy(v) for k, v in lpips_state.items()}, tmp_path / "vgg.pth")
    torch.save(torch_inception.state_dict(), tmp_path / "pt_inception.pth")

    lpips_vars = eval_weights.load_lpips_variables(tmp_path / "vgg.pth", tmp_path / "vgg16-397923af.pth")
    expected = eval_weights.convert_lpips(vgg_state, lpips_state)
    for got, want in zip(jax.tree.leaves(lpips_vars), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(got, want)
    inception_vars = eval_weights.load_inception_variables(tmp_path / "pt_inception.pth")
    expected = eval_weights.convert_inception(_numpy_state(torch_inception))
    for got, want in zip(jax.tree.leaves(inception_vars), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(FileNotFoundError, match="vgg16-397923af.pth"):
        eval_weights.load_lpips_variables(tmp_path / "vgg.pth", tmp_path / "missing.pth")
