"""Networks: VGG layout and weights, classifier head, bridge, segmenter, unpooling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from ddn.models import (
    Bridge,
    Classifier,
    DecoupledSegmenter,
    Segmenter,
    VGGEncoder,
    build_classifier,
    load_vgg_weights,
    normalize,
    saliency,
)
from ddn.models.segmenter import unpool
from pipeline.errors import UserError
from tests.conftest import VGG_WEIGHTS

TINY = 0.125


def tv_features(batch_norm: bool) -> nn.Sequential:
    from torchvision.models.vgg import cfgs, make_layers

    return make_layers(cfgs["D"], batch_norm=batch_norm)


def prefixed(module: nn.Module, prefix: str = "features.") -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in module.state_dict().items()}


def conv_channels(encoder: VGGEncoder) -> list[int]:
    return [m.out_channels for m in encoder.features if isinstance(m, nn.Conv2d)]


# ---------------------------------------------------------------- encoder and weights


@pytest.mark.parametrize("batch_norm", [False, True], ids=["vgg16", "vgg16_bn"])
def test_encoder_is_torchvision_layout(batch_norm, tmp_path):
    tv = tv_features(batch_norm).eval()
    ours = VGGEncoder(1.0, batch_norm=batch_norm).eval()
    theirs = prefixed(tv)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in theirs.items()
    }
    path = tmp_path / "tv.pth"
    torch.save(theirs, path)
    load_vgg_weights(ours, str(path), "vgg16_bn" if batch_norm else "vgg16")
    x = torch.randn(1, 3, 64, 64)
    pool5, switches, sizes = ours(x)
    with torch.no_grad():
        assert torch.allclose(pool5, tv(x), atol=1e-5)
    assert [tuple(s) for s in sizes] == [(64, 64), (32, 32), (16, 16), (8, 8), (4, 4)]
    assert [tuple(s.shape[-2:]) for s in switches] == [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]


def test_width_scales_every_conv():
    assert conv_channels(VGGEncoder(TINY)) == [8, 8, 16, 16, 32, 32, 32] + [64] * 6
    assert VGGEncoder(1 / 16).out_channels == 32
    assert conv_channels(VGGEncoder(0.001)) == [1] * 13
    with pytest.raises(UserError, match="width"):
        VGGEncoder(0.0)


def test_tiny_state_dict_round_trip(tmp_path):
    src = VGGEncoder(TINY, batch_norm=True)
    src.features[1].running_mean.uniform_()  # buffers travel too
    path = tmp_path / "tiny.pth"
    torch.save(prefixed(src.features), path)
    dst = VGGEncoder(TINY, batch_norm=True)
    load_vgg_weights(dst, str(path), "vgg16_bn")
    for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    # A different width: a one-line error naming the file and the mismatched keys.
    with pytest.raises(UserError, match=r"tiny\.pth.*shape mismatch.*features\.0\.weight") as e:
        load_vgg_weights(VGGEncoder(1 / 16, batch_norm=True), str(path), "vgg16_bn")
    assert "\n" not in str(e.value)
    # The wrong arch: BN keys are unexpected, and the message says so.
    with pytest.raises(UserError, match=r"unexpected features\.1\.weight.*check --arch"):
        load_vgg_weights(VGGEncoder(TINY), str(path), "vgg16")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "not found"),
        (b"this is not a checkpoint", "not a weights-only PyTorch state dict"),
        ([1, 2, 3], "not a state dict"),
        ({"features.0.weight": 3}, "not tensors: features.0.weight"),
        ({"conv1.weight": torch.zeros(1)}, r"missing features\.0\.weight.*unexpected conv1"),
    ],
    ids=["missing", "garbage", "list", "not-tensors", "wrong-keys"],
)
def test_bad_weight_files(tmp_path, content, match):
    path = tmp_path / "w.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(UserError, match=match) as e:
        load_vgg_weights(VGGEncoder(TINY), str(path), "vgg16")
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    assert "Weights only load failed" not in str(e.value)  # torch's advice is not for users


def test_none_keeps_init_and_unknown_arch_refused():
    enc = VGGEncoder(TINY)
    before = enc.features[0].weight.clone()
    load_vgg_weights(enc, "none", "vgg16")
    assert torch.equal(enc.features[0].weight, before)
    with pytest.raises(UserError, match="unknown arch"):
        load_vgg_weights(enc, "none", "resnet50")
    with pytest.raises(UserError, match="unknown arch"):
        Classifier(3, arch="vgg19")


def test_imagenet_goes_through_torchvision(monkeypatch):
    with pytest.raises(UserError, match="--width 1"):
        load_vgg_weights(VGGEncoder(0.5), "imagenet", "vgg16")

    tv = tv_features(batch_norm=True)
    urls = []

    def fake_download(url, *args, **kwargs):
        urls.append(url)
        return prefixed(tv)

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", fake_download)
    enc = VGGEncoder(1.0, batch_norm=True)
    load_vgg_weights(enc, "imagenet", "vgg16_bn")
    assert "vgg16_bn" in urls[0]
    assert torch.equal(enc.features[40].weight, tv[40].weight)

    def offline(url, *args, **kwargs):
        raise OSError("Temporary failure in name resolution\nmore lines")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(UserError, match="name resolution.*--weights PATH") as e:
        load_vgg_weights(enc, "imagenet", "vgg16_bn")
    assert "\n" not in str(e.value)


@pytest.mark.skipif(not VGG_WEIGHTS.is_file(), reason="../shared/weights not present")
def test_shared_imagenet_features_file():
    enc = VGGEncoder(1.0)
    load_vgg_weights(enc, str(VGG_WEIGHTS), "vgg16")
    state = torch.load(VGG_WEIGHTS, weights_only=True)
    assert torch.equal(enc.features[28].weight, state["features.28.weight"])
    with pytest.raises(UserError, match="missing .*check --arch"):
        load_vgg_weights(VGGEncoder(1.0, batch_norm=True), str(VGG_WEIGHTS), "vgg16_bn")


def test_full_vgg_state_dict_gives_fc6_fc7(tmp_path):
    width = 1 / 16  # fc6 512w x 7 x 7 -> 4096w, the shapes of torchvision's linear layers
    cls = Classifier(4, "vgg16", width, input_size=224)
    c5, c6 = cls.encoder.out_channels, cls.head.fc7.in_channels
    state = prefixed(VGGEncoder(width).features)
    state |= {
        "classifier.0.weight": torch.randn(c6, c5 * 49),
        "classifier.0.bias": torch.randn(c6),
        "classifier.3.weight": torch.randn(c6, c6),
        "classifier.3.bias": torch.randn(c6),
        "classifier.6.weight": torch.randn(1000, c6),  # the 1000-way layer is ignored
        "classifier.6.bias": torch.randn(1000),
    }
    path = tmp_path / "full.pth"
    torch.save(state, path)
    cls.load_pretrained(str(path))
    pool5 = torch.randn(2, c5, 7, 7)
    with torch.no_grad():
        # torchvision: flatten pool5 (C, H, W), then linear; ours: the 7x7 conv.
        ref = F.linear(pool5.flatten(1), state["classifier.0.weight"], state["classifier.0.bias"])
        assert torch.allclose(cls.head.fc6(pool5)[..., 0, 0], ref, atol=1e-4)
        h = torch.randn(2, c6, 1, 1)
        ref7 = F.linear(h.flatten(1), state["classifier.3.weight"], state["classifier.3.bias"])
        assert torch.allclose(cls.head.fc7(h)[..., 0, 0], ref7, atol=1e-4)
    small = Classifier(4, "vgg16", width, input_size=96)  # fc6 3x3: ImageNet's fc6 cannot fit
    before = small.head.fc6.weight.clone()
    with pytest.warns(UserWarning, match="fc6"):
        small.load_pretrained(str(path))
    assert torch.equal(small.head.fc6.weight, before)


# ---------------------------------------------------------------- classifier


@pytest.mark.parametrize(
    ("size", "width", "pool5", "kernel", "score"),
    [(64, TINY, 2, 2, 1), (96, TINY, 3, 3, 1), (160, TINY, 5, 5, 1), (320, 1 / 16, 10, 7, 4)],
)
def test_classifier_and_segmenter_shapes(size, width, pool5, kernel, score):
    cls = Classifier(5, "vgg16_bn", width, input_size=size).eval()
    assert cls.pool5_size == pool5 and cls.fc6_kernel == kernel
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        out = cls(x)
    c5 = cls.encoder.out_channels
    assert out.pool5.shape == (2, c5, pool5, pool5)
    assert out.scores.shape == (2, 5, score, score)
    assert torch.allclose(out.logits, out.scores.mean(dim=(2, 3)))
    assert torch.equal(out.max_scores, out.scores.amax(dim=(2, 3)))
    seg = DecoupledSegmenter(c5, width, pool5_size=cls.pool5_size).eval()
    sal = saliency(cls, out.pool5, torch.ones(2, 5))
    with torch.no_grad():
        assert seg.bridge(out.pool5, sal).shape == out.pool5.shape
        assert seg(out, sal).shape == (2, 2, size, size)


def test_odd_input_size_round_trips():
    cls = Classifier(3, "vgg16_bn", TINY, input_size=100).eval()
    seg = DecoupledSegmenter(cls.encoder.out_channels, TINY, cls.pool5_size).eval()
    with torch.no_grad():
        out = cls(torch.randn(1, 3, 100, 100))
        assert [tuple(s) for s in out.sizes] == [(100, 100), (50, 50), (25, 25), (12, 12), (6, 6)]
        assert seg(out, torch.randn_like(out.pool5)).shape == (1, 2, 100, 100)


def test_param_groups_put_head_at_ten_times():
    cls = Classifier(3, "vgg16_bn", TINY, input_size=64)
    groups = cls.param_groups(0.01)
    assert [g["lr"] for g in groups] == [0.01, pytest.approx(0.1)]
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in cls.parameters())
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in cls.head.parameters()}
    assert cls.param_groups(1.0, head_lr_mult=3)[1]["lr"] == 3.0


def test_new_layers_init():
    cls = Classifier(3, "vgg16", 0.5, input_size=64)
    assert cls.head.score.weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert all(not m.bias.any() for m in cls.head if isinstance(m, nn.Conv2d))
    seg = DecoupledSegmenter(cls.encoder.out_channels, 0.5, cls.pool5_size)
    conv = seg.segmenter.stages[0][0]
    assert conv.weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert not seg.segmenter.classify.bias.any()
    assert seg.segmenter.classify.out_channels == 2


def test_window_scores_equal_head_scores():
    cls = Classifier(4, "vgg16", TINY, input_size=320).double()
    win = torch.randn(5, cls.encoder.out_channels, 7, 7, dtype=torch.float64)
    assert torch.allclose(cls.window_scores(win), cls.head_scores(win)[..., 0, 0], atol=1e-12)


def test_build_classifier_from_config():
    cls = Classifier(7, "vgg16_bn", TINY, input_size=96)
    again = build_classifier(cls.config())
    assert again.config() == cls.config()
    again.load_state_dict(cls.state_dict())  # same architecture, key for key
    with pytest.raises(UserError, match="lacks input_size"):
        build_classifier({"num_classes": 3, "arch": "vgg16", "width": 1.0})


def test_normalize():
    x = torch.tensor([0, 124, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 4, 4)
    y = normalize(x.contiguous(memory_format=torch.channels_last))
    assert y.dtype == torch.float32
    assert y.is_contiguous(memory_format=torch.channels_last)
    expect = [(0 - 0.485 * 255) / (0.229 * 255), (124 - 0.456 * 255) / (0.224 * 255),
              (255 - 0.406 * 255) / (0.225 * 255)]  # fmt: skip
    assert torch.allclose(y[0, :, 0, 0], torch.tensor(expect), atol=1e-5)
    assert torch.equal(normalize(x[0]), y[0])
    with pytest.raises(ValueError):
        normalize(torch.zeros(1, 4, 2, 2, dtype=torch.uint8))


# ---------------------------------------------------------------- unpooling, segmenter


def test_unpool_puts_values_at_switch_positions():
    x = torch.tensor(
        [[1.0, 2, 0, 0, 9], [0, 0, 0, 5, 9], [3, 0, 0, 0, 9], [0, 0, 4, 0, 9], [9, 9, 9, 9, 9]]
    ).view(1, 1, 5, 5)  # the 5th row and column fall outside the 2x2 pools
    pooled, switches = F.max_pool2d(x, 2, 2, return_indices=True)
    assert switches.flatten().tolist() == [1, 8, 10, 17]  # flat positions in the 5x5 map
    out = unpool(pooled * 10, switches, x.shape[-2:])
    expect = torch.zeros(5, 5)
    expect[0, 1], expect[1, 3], expect[2, 0], expect[3, 2] = 20, 50, 30, 40
    assert torch.equal(out[0, 0], expect)


def test_segmenter_unpools_each_stage_with_its_own_switches():
    torch.manual_seed(0)
    cls = Classifier(3, "vgg16_bn", TINY, input_size=64).eval()
    seg = Segmenter(TINY).train()  # batch statistics: eval's init stats shrink the signal
    with torch.no_grad():
        out = cls(torch.randn(2, 3, 64, 64))
    seen = []
    for stage in seg.stages:
        stage.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    g = torch.rand_like(out.pool5) + 0.1  # no zeros: every unpooled value is visible
    with torch.no_grad():
        logits = seg(g, out.switches, out.sizes)
    assert logits.shape == (2, 2, 64, 64)
    for x, sw in zip(seen, reversed(out.switches), strict=True):
        hit = torch.zeros_like(x).flatten(2)
        hit.scatter_(2, sw.flatten(2), 1.0)
        assert not x.flatten(2)[hit == 0].any()  # nothing off the switch positions
    # and the switches matter: the same g with other switches gives another output
    shuffled = [sw.flip(-1) for sw in out.switches]
    with torch.no_grad():
        other = seg(g, shuffled, out.sizes)
    assert (other - logits).abs().max() > 0.1 * logits.abs().max()


def test_bridge_normalises_both_inputs():
    torch.manual_seed(0)
    bridge = Bridge(8, width=1 / 64, pool5_size=5).train()
    pool5 = torch.rand(4, 8, 5, 5) * 100
    sal = torch.randn(4, 8, 5, 5) * 1e-3  # gradients are this small (variance ~1e-6)
    assert bridge.bn_saliency(sal).var().item() == pytest.approx(1.0, rel=0.05)
    out = bridge(pool5, sal)
    assert out.shape == (4, 8, 5, 5)
    # both scales are normalised away: the bridge sees the same thing at any scale
    assert torch.allclose(bridge(pool5 * 1e-2, sal * 1e3), out, atol=1e-3 * out.abs().max().item())


def test_decoupled_segmenter_trains_and_leaves_classifier_alone():
    # N(0, 0.01) weights through 13+3 BN layers still learn: fit one batch of masks.
    torch.manual_seed(0)
    cls = Classifier(3, "vgg16_bn", 1 / 16, input_size=64).eval()
    seg = DecoupledSegmenter(cls.encoder.out_channels, 1 / 16, cls.pool5_size)
    x = torch.randn(8, 3, 64, 64)
    y = torch.zeros(8, 64, 64, dtype=torch.long)
    for i in range(8):
        r, c = divmod(i, 4)
        x[i, :, 16 * r : 16 * r + 24, 10 * c : 10 * c + 24] += 3
        y[i, 16 * r : 16 * r + 24, 10 * c : 10 * c + 24] = 1
    out = cls(x)  # with grad on purpose: the segmenter must not reach into the classifier
    sal = saliency(cls, out.pool5, torch.ones(8, 3))
    opt = torch.optim.SGD(seg.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(seg(out, sal), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert all(p.grad is None for p in cls.parameters())


def test_repeated_rows_pair_each_image_with_its_seeds():
    # Inference: the K+1 seeds of each image as adjacent rows of one batch.
    torch.manual_seed(0)
    cls = Classifier(3, "vgg16_bn", TINY, input_size=64).eval()
    seg = DecoupledSegmenter(cls.encoder.out_channels, TINY, cls.pool5_size).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        rep = cls(x).repeat_interleave(3)
        logits = seg(rep, saliency(cls, rep.pool5, torch.eye(3).repeat(2, 1), scores=rep.scores))
        scale = logits.abs().max().item()  # eval BN with init statistics: tiny values
        assert (logits[0] - logits[3]).abs().max() > 0.01 * scale  # the images differ
        for i in range(2):
            one = cls(x[i : i + 1]).repeat_interleave(3)
            own = seg(one, saliency(cls, one.pool5, torch.eye(3), scores=one.scores))
            assert torch.allclose(logits[3 * i : 3 * i + 3], own, rtol=1e-4, atol=1e-5 * scale)
