import torch

from robustssl.data import AugmentSpec, ContrastiveAugment, DeviceLoader, ImageDataset, epoch_order


def _data(n=50, c=1, size=8):
    images = torch.arange(n * c * size * size, dtype=torch.int64).remainder(256).to(torch.uint8).view(n, c, size, size)
    return ImageDataset(images, torch.arange(n) % 10, torch.arange(n), "synthetic", "train")


def test_order_depends_only_on_seed_and_epoch():
    pos = torch.arange(100)
    assert torch.equal(epoch_order(pos, 3, 1), epoch_order(pos, 3, 1))
    assert not torch.equal(epoch_order(pos, 3, 1), epoch_order(pos, 3, 2))
    assert not torch.equal(epoch_order(pos, 3, 1), epoch_order(pos, 4, 1))
    assert torch.equal(epoch_order(pos, 3, 1).sort().values, pos)


def test_loader_yields_the_index_set_in_batches_and_resumes_mid_epoch():
    data = _data()
    loader = DeviceLoader(data, batch_size=8, seed=0)
    subset = torch.tensor([1, 4, 9, 16, 25, 36, 49, 2, 3, 5, 7, 11, 13, 17, 19, 23, 29])
    batches = list(loader.epoch(subset, epoch=2))
    assert len(batches) == len(subset) // 8
    seen = torch.cat([b.positions for b in batches])
    assert set(seen.tolist()) <= set(subset.tolist()) and len(set(seen.tolist())) == 16
    for b in batches:
        assert b.images.dtype == torch.float32 and b.images.min() >= 0 and b.images.max() <= 1
        assert torch.equal(b.images, data.images[b.positions].float() / 255)
        assert torch.equal(b.labels, data.labels[b.positions]) and b.weights is None
    resumed = list(loader.epoch(subset, epoch=2, start_batch=1))
    assert torch.equal(resumed[0].positions, batches[1].positions)


def test_coreset_weights_travel_with_their_positions():
    data = _data()
    loader = DeviceLoader(data, batch_size=4, seed=1)
    positions = torch.tensor([3, 8, 13, 21, 34, 40, 41, 47])
    weights = positions.float() / 10  # weight i belongs to position i
    for b in loader.epoch(positions, epoch=0, weights=weights):
        assert torch.allclose(b.weights, b.positions.float() / 10)


def test_augment_is_seeded_batched_and_in_range():
    x = torch.rand(16, 1, 28, 28)
    aug = ContrastiveAugment(AugmentSpec(crop_scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.4, 0.1)), 28, 1)
    torch.manual_seed(0)
    a = aug(x)
    torch.manual_seed(0)
    b = aug(x)
    assert torch.equal(a, b) and a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert not torch.equal(a, aug(x))


def test_augment_colour_and_strength_zero_is_identity():
    x = torch.rand(4, 3, 16, 16)
    aug = ContrastiveAugment(AugmentSpec(flip=False), 16, 3, strength=0.0)
    assert torch.allclose(aug(x), x, atol=1e-5)
    full = ContrastiveAugment(AugmentSpec(), 16, 3)
    assert full(x).shape == x.shape


def test_crop_covers_the_requested_area_and_flip_mirrors():
    # A horizontal ramp: a full-size crop without flip is the identity, with flip the mirror.
    ramp = torch.linspace(0, 1, 16).view(1, 1, 1, 16).expand(4, 1, 16, 16).contiguous()
    aug = ContrastiveAugment(AugmentSpec(crop_scale=(1.0, 1.0), flip=True, jitter=(0, 0, 0, 0), jitter_p=0.0), 16, 1)
    torch.manual_seed(0)
    out = aug(ramp)
    for img in out:
        same, mirrored = torch.allclose(img, ramp[0], atol=1e-5), torch.allclose(img, ramp[0].flip(-1), atol=1e-5)
        assert same or mirrored
    # A small crop of a ramp spans a narrower value range than the image.
    small = ContrastiveAugment(AugmentSpec(crop_scale=(0.1, 0.1), flip=False, jitter=(0, 0, 0, 0), jitter_p=0.0), 16, 1)
    spans = small(ramp).amax(dim=(1, 2, 3)) - small(ramp).amin(dim=(1, 2, 3))
    assert (spans < 0.7).all()


def test_colour_jitter_and_grayscale_on_rgb():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 8, 8)
    gray_only = ContrastiveAugment(AugmentSpec(crop_scale=(1, 1), flip=False, jitter=(0, 0, 0, 0), jitter_p=0.0, grayscale_p=1.0), 8, 3)
    g = gray_only(x)
    assert torch.allclose(g[:, 0], g[:, 1]) and torch.allclose(g[:, 1], g[:, 2])
    hue = ContrastiveAugment(AugmentSpec(crop_scale=(1, 1), flip=False, jitter=(0, 0, 0, 0.5), jitter_p=1.0, grayscale_p=0.0), 8, 3)
    h = hue(x)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    unclamped = (h > 0.001) & (h < 0.999)
    assert not torch.allclose(h, x, atol=1e-3)
    # A hue rotation keeps luma where nothing was clipped.
    keep = unclamped.all(1, keepdim=True)
    assert torch.allclose(((h - x) * luma).sum(1, keepdim=True)[keep], torch.zeros(1), atol=1e-4)


def test_fixed_scale_square_patches_have_the_requested_side():
    # EMP-SSL's patch variant: scale (0.25, 0.25), ratio 1 -> every crop is half the side, square.
    from robustssl.data.augment import crop_boxes

    theta = crop_boxes(200, (0.25, 0.25), (1.0, 1.0), flip=True, device=torch.device("cpu"))
    assert torch.allclose(theta[:, 0, 0].abs(), torch.full((200,), 0.5)) and torch.allclose(theta[:, 1, 1], torch.full((200,), 0.5))
    assert (theta[:, 0, 0] < 0).any() and (theta[:, 0, 0] > 0).any()  # both flip states drawn
    assert theta[:, :, 2].abs().max() <= 0.5 + 1e-6  # the centre keeps the patch inside the image
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = crop_boxes(5, (0.08, 1.0), (0.75, 4 / 3), True, torch.device("cpu"), g1)
    assert torch.equal(a, crop_boxes(5, (0.08, 1.0), (0.75, 4 / 3), True, torch.device("cpu"), g2))


def test_gaussian_blur_matches_a_float64_reference_and_keeps_constants():
    from robustssl.data.augment import gaussian_blur

    x = torch.rand(3, 2, 16, 16, dtype=torch.float64)
    sigma = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    y = gaussian_blur(x, sigma)
    for i, s in enumerate(sigma.tolist()):  # direct 2-D reference: reflect-padded, normalized outer-product kernel
        r = 6  # ceil(3 x the largest sigma, 2.0); the blur uses one radius for the whole batch
        t = torch.arange(-r, r + 1, dtype=torch.float64)
        k1 = torch.exp(-0.5 * (t / s) ** 2)
        k2 = torch.outer(k1, k1) / k1.sum() ** 2
        padded = torch.nn.functional.pad(x[i:i + 1], (r, r, r, r), mode="reflect")[0]
        ref = torch.stack([torch.nn.functional.conv2d(padded[c][None, None], k2[None, None])[0, 0] for c in range(2)])
        assert torch.allclose(y[i], ref, atol=1e-12)
    const = torch.full((2, 3, 8, 8), 0.3)
    assert torch.allclose(gaussian_blur(const, torch.tensor([0.7, 1.9])), const, atol=1e-6)


def test_blur_and_solarize_follow_their_probabilities():
    x = torch.rand(64, 3, 8, 8)
    plain = AugmentSpec(crop_scale=(1, 1), flip=False, jitter=(0, 0, 0, 0), jitter_p=0.0, grayscale_p=0.0)
    solar = ContrastiveAugment(AugmentSpec(**{**plain.__dict__, "solarize_p": 1.0}), 8, 3)
    assert torch.allclose(solar(x), torch.where(x >= 0.5, 1 - x, x), atol=1e-6)
    blur = ContrastiveAugment(AugmentSpec(**{**plain.__dict__, "blur_p": 1.0, "blur_sigma": (1.0, 2.0)}), 8, 3)
    out = blur(x)
    assert (out - x).abs().flatten(1).max(1).values.min() > 1e-3  # every image blurred
    assert out.std() < x.std()
    off = ContrastiveAugment(plain, 8, 3)
    assert torch.allclose(off(x), x, atol=1e-6)
