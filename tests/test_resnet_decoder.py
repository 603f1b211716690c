"""Facts about the deep ResNet encoder and the decoder probe."""
import numpy as np
import pytest
import torch
from torch import nn

from envs.counting import render_batch
from pjepa_ext.decoder import ImageDecoder, decoder_loss, decoder_target, reconstruct
from pjepa_ext.resnet import (PAPER_RESNET, ResNetEncoder, count_layers, init_statistics,
                              parameter_count)

torch.set_num_threads(1)

SMALL = dict(width=16, blocks_per_stage=1, latent_dim=32)


def _images(batch: int, size: int) -> torch.Tensor:
    return torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)


@pytest.fixture(scope="module")
def paper_encoder():
    torch.manual_seed(0)
    return ResNetEncoder(**PAPER_RESNET)


def test_paper_preset_matches_printed_size(paper_encoder):
    assert parameter_count(paper_encoder) == 12_260_192
    assert count_layers(paper_encoder) == 69


@pytest.mark.parametrize("size", [64, 32])
def test_paper_preset_output_shape(paper_encoder, size):
    with torch.no_grad():
        z = paper_encoder(_images(2, size))
    assert z.shape == (2, 256)
    assert z.dtype == torch.float32


@pytest.mark.parametrize("size", [64, 32])
@pytest.mark.parametrize("kwargs", [
    SMALL,
    dict(width=32, blocks_per_stage=2, latent_dim=64),
    dict(SMALL, stem_stride=1, stem_pool=False),
    dict(SMALL, zero_init_residual=True),
])
def test_small_presets_output_shape(kwargs, size):
    encoder = ResNetEncoder(**kwargs)
    assert encoder(_images(3, size)).shape == (3, kwargs["latent_dim"])


@pytest.mark.parametrize("kernel", [7, 8, 14])
def test_stride4_stem_gives_16x16_maps_at_64x64_for_any_kernel(kernel):
    encoder = ResNetEncoder(**SMALL, stem_kernel=kernel, stem_stride=4, stem_pool=False)
    assert encoder.stem[0].weight.shape == (16, 3, kernel, kernel)
    with torch.no_grad():
        maps = encoder.stem(encoder.pre(_images(2, 64)))
    assert maps.shape == (2, 16, 16, 16)


def test_the_stem_pools_give_the_same_maps_shape_and_differ_in_value():
    torch.manual_seed(0)
    images = _images(2, 64)
    maps = {}
    for pool in ("max", "avg", True):
        torch.manual_seed(0)
        encoder = ResNetEncoder(**SMALL, stem_pool=pool)
        with torch.no_grad():
            maps[pool] = encoder.stem(encoder.pre(images))
    assert maps["avg"].shape == maps["max"].shape == (2, 16, 16, 16)
    assert torch.equal(maps[True], maps["max"])
    assert (maps["max"] >= maps["avg"]).all() and not torch.equal(maps["max"], maps["avg"])


def test_bad_stem_pool_is_refused_with_the_allowed_values():
    with pytest.raises(ValueError, match="max, avg, none"):
        ResNetEncoder(**SMALL, stem_pool="mean")


def test_bad_stem_kernel_is_refused():
    with pytest.raises(ValueError, match="stem_kernel"):
        ResNetEncoder(**SMALL, stem_kernel=0)


def test_kaiming_conv_init_is_he_normal_fan_out_and_leaves_the_linear_alone():
    torch.manual_seed(0)
    default = ResNetEncoder(**SMALL)
    torch.manual_seed(0)
    he = ResNetEncoder(**SMALL, conv_init="kaiming")
    for (name, a), (_, b) in zip(default.named_modules(), he.named_modules()):
        if isinstance(a, nn.Conv2d):
            out_channels, _, kh, kw = b.weight.shape
            expected = (2.0 / (out_channels * kh * kw)) ** 0.5
            assert abs(b.weight.std().item() / expected - 1) < 0.2, name
            assert b.weight.std() > a.weight.std(), name
        elif isinstance(a, nn.Linear):
            assert torch.equal(a.weight, b.weight), name


def test_kaiming_conv_init_spreads_the_latents_of_counting_frames():
    rng = np.random.default_rng(0)
    frames = torch.as_tensor(render_batch(list(range(9)) * 4, [0] * 36, [[200, 40, 40]] * 36, rng))
    spread = {}
    for init in ("torch", "kaiming"):
        torch.manual_seed(0)
        spread[init] = init_statistics(ResNetEncoder(**SMALL, conv_init=init), frames)["latent_spread"]
    assert spread["kaiming"] > 5 * spread["torch"]


def test_kaiming_init_keeps_zero_init_residual():
    encoder = ResNetEncoder(**SMALL, conv_init="kaiming", zero_init_residual=True)
    assert all(not block.conv2.weight.any() for block in encoder.blocks())
    assert encoder.blocks()[0].conv1.weight.any()


def test_bad_conv_init_is_refused_with_the_allowed_values():
    with pytest.raises(ValueError, match="torch, kaiming"):
        ResNetEncoder(**SMALL, conv_init="xavier")


def test_layer_count_follows_blocks_per_stage():
    # stem + 2 convs per block + 3 projections + linear
    assert count_layers(ResNetEncoder(**SMALL)) == 1 + 4 * 2 + 3 + 1
    assert count_layers(ResNetEncoder(width=16, blocks_per_stage=3)) == 1 + 12 * 2 + 3 + 1


def test_no_conv_bias_and_no_normalisation(paper_encoder):
    convs = [m for m in paper_encoder.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 68
    assert all(conv.bias is None for conv in convs)
    norm_types = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)
    assert not any(isinstance(m, norm_types) for m in paper_encoder.modules())


def test_pixel_preprocessing_maps_to_half_unit_range():
    encoder = ResNetEncoder(**SMALL)
    pixels = torch.tensor([0, 255], dtype=torch.uint8)
    assert encoder.pre(pixels).tolist() == [-0.5, 0.5]
    images = _images(2, 32)
    assert torch.equal(encoder(images), encoder(images.float()))


def test_gradient_reaches_every_encoder_parameter():
    torch.manual_seed(0)
    encoder = ResNetEncoder(**SMALL)
    encoder(_images(4, 32)).pow(2).sum().backward()
    for name, param in encoder.named_parameters():
        assert param.grad is not None, name
        assert param.grad.abs().sum() > 0, name


def test_zero_init_residual_makes_blocks_start_as_shortcut():
    encoder = ResNetEncoder(**SMALL, zero_init_residual=True)
    assert all(block.conv2.weight.abs().sum() == 0 for block in encoder.blocks())
    identity_block = encoder.blocks()[0]  # stage 0: no projection
    x = torch.rand(2, 16, 8, 8)
    assert torch.equal(identity_block(x), x)


def test_init_statistics_report_finite_values():
    stats = init_statistics(ResNetEncoder(**SMALL), _images(4, 32))
    assert set(stats) == {"input_std", "pooled_std", "latent_std", "latent_norm", "latent_spread"}
    assert all(torch.isfinite(torch.tensor(v)) and v > 0 for v in stats.values())


def test_encoder_rejects_wrong_channels():
    with pytest.raises(ValueError, match="shape"):
        ResNetEncoder(**SMALL)(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="width"):
        ResNetEncoder(width=0)


@pytest.mark.parametrize("size, layers", [(64, 6), (32, 5)])
def test_decoder_output_shape_and_layers(size, layers):
    torch.manual_seed(0)
    decoder = ImageDecoder(latent_dim=256, image_size=size)
    out = decoder(torch.randn(3, 256) * 10)
    assert out.shape == (3, 3, size, size)
    assert count_layers(decoder) == layers


def test_an_output_below_the_black_background_is_pulled_back():
    # The background is -1 on the probe's scale; a tanh output would only reach it at -infinity and, driven
    # there, pass no gradient (what killed the 64x64 probe). The linear output is pulled back to -1.
    decoder = ImageDecoder(latent_dim=8, image_size=16)
    with torch.no_grad():
        decoder.deconv[-1].bias.fill_(-50.0)
    black = torch.zeros(2, 3, 16, 16, dtype=torch.uint8)
    decoder_loss(decoder, torch.zeros(2, 8), black).backward()
    # per channel: d/db of the mean of (b + 1)^2 over the 3 channels' pixels = 2 * (-49) / 3 (the weights add ~0.1%)
    torch.testing.assert_close(decoder.deconv[-1].bias.grad, torch.full((3,), -98 / 3), rtol=0.01, atol=0)


def test_decoder_parameter_count_near_paper():
    # paper: 202,883 at latent 256, 64x64
    assert parameter_count(ImageDecoder(latent_dim=256, image_size=64)) == 198_115


def test_decoder_target_range():
    target = decoder_target(torch.tensor([0, 255], dtype=torch.uint8))
    assert target.tolist() == [-1.0, 1.0]


def test_decoder_loss_on_detached_latent_leaves_encoder_untouched():
    torch.manual_seed(0)
    encoder = ResNetEncoder(**SMALL)
    decoder = ImageDecoder(latent_dim=SMALL["latent_dim"], image_size=32)
    obs = _images(4, 32)
    loss = decoder_loss(decoder, encoder(obs).detach(), obs)
    loss.backward()
    assert loss.ndim == 0
    assert all(p.grad is None for p in encoder.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in decoder.parameters())


def test_decoder_loss_does_not_detach_by_itself():
    torch.manual_seed(0)
    encoder = ResNetEncoder(**SMALL)
    decoder = ImageDecoder(latent_dim=SMALL["latent_dim"], image_size=32)
    obs = _images(4, 32)
    decoder_loss(decoder, encoder(obs), obs).backward()
    assert encoder.proj.weight.grad is not None and encoder.proj.weight.grad.abs().sum() > 0


def test_decoder_loss_is_zero_for_a_perfect_reconstruction():
    torch.manual_seed(0)
    decoder = ImageDecoder(latent_dim=8, image_size=16)
    obs = reconstruct(decoder, torch.zeros(2, 8))
    # quantisation to uint8 is the only error left
    assert decoder_loss(decoder, torch.zeros(2, 8), obs).item() < (1 / 127.5) ** 2


def test_reconstruct_returns_uint8_images_clamped_to_the_pixel_range():
    decoder = ImageDecoder(latent_dim=8, image_size=32)
    images = reconstruct(decoder, torch.randn(2, 8))
    assert images.dtype == torch.uint8 and images.shape == (2, 3, 32, 32)
    with torch.no_grad():
        decoder.deconv[-1].bias.copy_(torch.tensor([-5.0, 0.0, 5.0]))
    images = reconstruct(decoder, torch.zeros(2, 8)).int()
    assert images[:, 0].max() == 0 and images[:, 2].min() == 255


@pytest.mark.parametrize("size", [48, 8, 0, 100, 64.0])
def test_bad_image_size_raises(size):
    with pytest.raises(ValueError, match="power of two"):
        ImageDecoder(latent_dim=8, image_size=size)


def test_decoder_rejects_wrong_latent_size():
    with pytest.raises(ValueError, match="latents"):
        ImageDecoder(latent_dim=8, image_size=16)(torch.zeros(2, 9))
