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
    seen = torch.cat([p for p, _ in batches])
    assert set(seen.tolist()) <= set(subset.tolist()) and len(set(seen.tolist())) == 16
    for pos, x in batches:
        assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
        assert torch.equal(x, data.images[pos].float() / 255)
    resumed = list(loader.epoch(subset, epoch=2, start_batch=1))
    assert torch.equal(resumed[0][0], batches[1][0])


def test_augment_is_seeded_batched_and_in_range():
    x = torch.rand(16, 1, 28, 28)
    aug = ContrastiveAugment(AugmentSpec(crop_scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.4, 0.1)), 28, 1)
    torch.manual_seed(0)
    a = aug(x)
    torch.manual_seed(0)
    b = aug(x)
    assert torch.equal(a, b) and a.shape == x.shape and 0 <= a.min() and a.max() <= 1
    assert not torch.equal(a, aug(x))


def test_augment_colour_and_strength_zero_is_identity():
    x = torch.rand(4, 3, 16, 16)
    aug = ContrastiveAugment(AugmentSpec(flip=False), 16, 3, strength=0.0)
    assert torch.allclose(aug(x), x, atol=1e-5)
    full = ContrastiveAugment(AugmentSpec(), 16, 3)
    assert full(x).shape == x.shape
