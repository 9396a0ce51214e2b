"""Packed generators: K members in one module behave as K separate generators."""
import pytest
import torch

from dip.models import build, to_standard
from dip.models.common import ChannelCat, cat_members
from dip.models.packed import PackedGenerator, member_tensors, pack, unpack

# name -> (generator, config, input side); every kind and layer type the packer handles
CASES = {
    "skip": ("skip", dict(num_channels_down=[4, 6], num_channels_up=[4, 6], num_channels_skip=[2, 0],
                          downsample_mode=["lanczos2", "stride"], upsample_mode="bilinear",
                          pad="reflection"), 16),
    "skip-pool": ("skip", dict(num_channels_down=[3, 5], num_channels_up=[4, 5], num_channels_skip=[2, 3],
                               downsample_mode=["avg", "max"], upsample_mode="nearest", need1x1_up=False,
                               act_fun="Swish"), 16),
    "unet": ("unet", dict(feature_scale=16, norm_layer="batch", upsample_mode="nearest", concat_x=True), 32),
    "unet-deconv": ("unet", dict(feature_scale=16, norm_layer="instance", upsample_mode="deconv",
                                 pad="reflection"), 32),
    "resnet": ("resnet", dict(num_blocks=2, num_channels=4), 16),
    "resnet-instance": ("resnet", dict(num_blocks=1, num_channels=3, norm_layer="instance",
                                       act_fun="ELU"), 16),
    "decoder": ("decoder", dict(num_channels=[4, 6, 5], n_upsamples=2,
                                upsample_mode=["nearest", "bilinear"]), 4),
}
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def members(case, k, dtype=torch.float32):
    name, cfg, _ = CASES[case]
    gens = []
    with torch.random.fork_rng(devices=[]):  # the global RNG is left as the other tests had it
        for seed in range(k):
            torch.manual_seed(seed)
            gens.append(build(name, 3, 2, **cfg).to(dtype))
    return gens


def codes(case, k, dtype):
    side = CASES[case][2]
    g = torch.Generator().manual_seed(10)
    return [torch.rand(1, 3, side, side, dtype=dtype, generator=g) for _ in range(k)]


def separate_step(gens, zs, ws):
    """Outputs, input gradients and parameter gradients of each member on its own."""
    outs, zgrads, pgrads = [], [], []
    for g, z, w in zip(gens, zs, ws, strict=True):
        z = z.clone().requires_grad_(True)
        y = g(z)
        (y * w).sum().backward()
        outs.append(y.detach())
        zgrads.append(z.grad)
        pgrads.append({n: p.grad for n, p in g.named_parameters()})
    return outs, zgrads, pgrads


def packed_step(packed, zs, ws):
    z = torch.cat(zs, dim=1).requires_grad_(True)
    y = packed(z)
    (y * torch.cat(ws, dim=1)).sum().backward()
    return y.detach(), z.grad


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("case", list(CASES))
def test_packed_step_equals_separate(case, k, dtype):
    gens = members(case, k, dtype)
    packed = pack(gens)
    zs = codes(case, k, dtype)
    side = zs[0].shape[-1] * packed.input_scale
    ws = [torch.randn(1, 2, side, side, dtype=dtype, generator=torch.Generator().manual_seed(20 + i))
          for i in range(k)]
    y, zgrad = packed_step(packed, zs, ws)
    outs, zgrads, pgrads = separate_step(gens, zs, ws)
    tol = dict(rtol=TOL[dtype], atol=TOL[dtype])
    assert y.shape == (1, 2 * k, side, side)
    torch.testing.assert_close(y, torch.cat(outs, dim=1), **tol)
    torch.testing.assert_close(zgrad, torch.cat(zgrads, dim=1), **tol)
    grads = {n: p.grad for n, p in packed.named_parameters()}
    state = packed.state_dict()
    for i, g in enumerate(gens):
        mine = member_tensors(packed, i, grads)
        assert list(mine) == list(pgrads[i])  # names and registration order
        # absolute errors on the scale of the member's gradient: a convolution's bias before a
        # train-mode BatchNorm has a gradient of exactly 0, which float32 computes as the rounding
        # residue (about 1e-6 here) of sums whose terms have the size of the other gradients, and
        # two summation orders (grouped or plain convolution, per CPU) leave different residues
        scale = max(1.0, max(float(grad.abs().max()) for grad in pgrads[i].values()))
        for n, grad in pgrads[i].items():
            torch.testing.assert_close(mine[n], grad, rtol=TOL[dtype], atol=TOL[dtype] * scale)
        # train-mode BatchNorm: running statistics (and counts) moved per member
        for n, v in member_tensors(packed, i, state).items():
            torch.testing.assert_close(v, g.state_dict()[n], **tol)


@pytest.mark.parametrize("case", list(CASES))
def test_unpack_restores_each_member_exactly(case):
    gens = members(case, 3)
    gens[1].eval()
    gens[1].train()
    packed = pack(gens)
    assert isinstance(packed, PackedGenerator) and packed.members == 3
    assert packed.config == gens[0].config and packed.member_type is type(gens[0])
    for k, g in enumerate(gens):
        u = unpack(packed, k)
        assert type(u) is type(g) and u.config == g.config and u.training
        assert list(u.state_dict()) == list(g.state_dict())
        for n, v in g.state_dict().items():
            assert torch.equal(u.state_dict()[n], v) and u.state_dict()[n].dtype == v.dtype, n
        assert [p.requires_grad for p in u.parameters()] == [p.requires_grad for p in g.parameters()]
        assert [type(m) for m in u.modules()] == [type(m) for m in g.modules()]
        assert sum(p.numel() for p in u.parameters()) * 3 == sum(p.numel() for p in packed.parameters())
    # the member's output is its slice of the packed output (train mode, same statistics)
    zs = codes(case, 3, torch.float32)
    y = packed(torch.cat(zs, dim=1))
    u = unpack(pack(gens), 2)
    torch.testing.assert_close(u(zs[2]), y[:, 4:6], rtol=1e-5, atol=1e-5)


def test_unpack_after_training_is_the_members_fit():
    """An optimiser on the packed module moves each member as on that member alone (SGD: Adam
    would turn the rounding noise of the zero gradients of biases before a BatchNorm into
    full-size steps, differently in either order of summation)."""
    gens = members("skip", 2)
    packed = pack(gens)
    zs = codes("skip", 2, torch.float32)
    opt = torch.optim.SGD(packed.parameters(), lr=0.1)
    target = torch.rand(1, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    for _ in range(3):
        opt.zero_grad()
        y = packed(torch.cat(zs, dim=1))
        sum(((y[:, 2 * i:2 * i + 2] - target[:, 2 * i:2 * i + 2]) ** 2).mean() for i in range(2)).backward()
        opt.step()
    for i, g in enumerate(gens):
        o = torch.optim.SGD(g.parameters(), lr=0.1)
        for _ in range(3):
            o.zero_grad()
            ((g(zs[i]) - target[:, 2 * i:2 * i + 2]) ** 2).mean().backward()
            o.step()
        for n, v in unpack(packed, i).state_dict().items():
            torch.testing.assert_close(v, g.state_dict()[n], rtol=1e-4, atol=1e-5)


def test_pack_refuses_different_configs():
    a = build("skip", 3, 2, **CASES["skip"][1])
    b = build("skip", 3, 2, **{**CASES["skip"][1], "num_channels_up": [4, 7]})
    with pytest.raises(ValueError, match=r"generators\[1\] has config num_channels_up=\[4, 7\]"):
        pack([a, b])
    with pytest.raises(ValueError, match="config out_channels"):
        pack([a, build("skip", 3, 3, **CASES["skip"][1])])
    with pytest.raises(ValueError, match="pack generators of one class"):
        pack([a, build("resnet", 3, 2, **CASES["resnet"][1])])
    with pytest.raises(ValueError, match="one dtype and device"):
        pack([a, build("skip", 3, 2, **CASES["skip"][1]).double()])
    with pytest.raises(ValueError, match="same mode"):
        pack([a, build("skip", 3, 2, **CASES["skip"][1]).eval()])
    with pytest.raises(ValueError, match="empty"):
        pack([])
    with pytest.raises(TypeError, match="not a dip.models generator"):
        pack([torch.nn.Conv2d(3, 2, 3)])
    with pytest.raises(TypeError, match="list of generators"):
        pack(a)


def test_unpack_and_input_errors():
    packed = pack(members("resnet", 2))
    with pytest.raises(ValueError, match=r"k must be a member index in \[0, 2\), got 2"):
        unpack(packed, 2)
    with pytest.raises(TypeError, match="PackedGenerator"):
        unpack(members("resnet", 1)[0], 0)
    with pytest.raises(ValueError, match=r"expects input \(N, 6, H, W\)"):
        packed(torch.rand(1, 3, 16, 16))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("case", ["skip", "unet", "decoder"])
def test_channels_last(case, dtype):
    """The engine runs channels_last on some CPUs: the packed module accepts it and gives the
    NCHW result (fp32: channels_last kernels sum in another order, gradients up to ~15 here)."""
    gens = members(case, 2, dtype)
    ref = pack(gens)
    cl = pack(gens).to(memory_format=torch.channels_last)
    z = torch.cat(codes(case, 2, dtype), dim=1)
    side = z.shape[-1] * ref.input_scale
    w = torch.randn(1, 4, side, side, dtype=dtype, generator=torch.Generator().manual_seed(5))
    zc = z.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    z.requires_grad_(True)
    y, yc = ref(z), cl(zc)
    tol = dict(rtol=TOL[dtype], atol=TOL[dtype] * (1 if dtype == torch.float64 else 10))
    torch.testing.assert_close(yc, y, **tol)
    (yc * w).sum().backward()
    (y * w).sum().backward()
    torch.testing.assert_close(zc.grad, z.grad, **tol)
    for (n, p), (_, q) in zip(ref.named_parameters(), cl.named_parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, **tol, msg=n)
    u = unpack(cl, 1)  # the member keeps the layout
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in u.parameters() if p.dim() == 4)


@pytest.mark.parametrize("channels_last", [False, True])
def test_cat_members_interleaves_per_member(channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    a = torch.rand(2, 3 * 2, 4, 5).contiguous(memory_format=fmt)
    b = torch.rand(2, 3 * 4, 4, 5).contiguous(memory_format=fmt)
    out = ChannelCat(3)([a, b])
    want = torch.cat([torch.cat([a[:, 2 * k:2 * k + 2], b[:, 4 * k:4 * k + 4]], dim=1) for k in range(3)], dim=1)
    assert torch.equal(out, want)
    assert out.is_contiguous(memory_format=fmt)
    assert torch.equal(cat_members([a, b], 1), torch.cat([a, b], dim=1))


def test_standard_ops_pack_and_export_copy():
    """Members made of standard ops (``to_standard``) pack too, and ``to_standard`` of a pack
    computes the same function (the fused BN + LeakyReLU and the native downsampler replaced)."""
    gens = members("skip", 2)
    z = torch.cat(codes("skip", 2, torch.float32), dim=1)
    native = pack(gens)
    standard = pack([to_standard(g) for g in gens])
    torch.testing.assert_close(standard(z), native(z), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(to_standard(pack(gens))(z), pack(gens)(z), rtol=1e-5, atol=1e-5)
