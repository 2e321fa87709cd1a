"""task=fashion_mnist, cifar100, svhn: tiny files in each data set's real on-disk format, read by the
real torchvision classes (download=False) and by eqprop's task builder; shapes, labels,
normalisation and augmentation checked against the pixels written; missing data fails early."""
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from torchvision import datasets

from eqprop.config import ConfigError, TaskConfig, from_dict
from eqprop.tasks import build_task, check_available
from eqprop.tasks.torchvision_tasks import SPECS, transforms_for
from tests.launch_utils import TINY, compose_cfg, launch_cli, read_metrics
from tests.tiny_datasets import with_checksums_of, write_cifar100, write_idx, write_svhn

SHAPE = {"fashion_mnist": (1, 28, 10), "cifar100": (3, 32, 100), "svhn": (3, 32, 10)}
# the training sets' channel statistics (written out here, not read from eqprop, so a drift fails)
CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
SVHN_STATS = ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970))


def _task(name, data_dir, **kw) -> TaskConfig:
    ch, size, classes = SHAPE[name]
    return TaskConfig(name=name, data_dir=str(data_dir), download=False, in_channels=ch, in_size=size,
                      input_dim=ch * size * size, num_classes=classes, **kw)


def _normalised(pixels_chw: np.ndarray, mean, std) -> torch.Tensor:
    x = torch.tensor(pixels_chw, dtype=torch.float32) / 255
    return (x - torch.tensor(mean).view(-1, 1, 1)) / (3 * torch.tensor(std).view(-1, 1, 1))  # the original's 3 x std


def test_fashion_mnist_reads_the_idx_files_with_pixels_in_0_1(tmp_path):
    written = write_idx(tmp_path / "FashionMNIST" / "raw", 12, 7)
    raw = datasets.FashionMNIST(tmp_path, train=False, download=False)  # the real class, no download
    assert len(raw) == 7 and raw.classes[0] == "T-shirt/top"

    train, test = build_task(_task("fashion_mnist", tmp_path))
    assert (len(train), len(test)) == (12, 7)
    images, labels = written["t10k"]
    for i in (0, 6):
        x, y = test[i]
        assert x.shape == (1, 28, 28) and y == int(labels[i])
        torch.testing.assert_close(x[0], torch.tensor(images[i], dtype=torch.float32) / 255)
    x, _ = train[3]  # augment=false: the training images are the written ones too
    torch.testing.assert_close(x[0], torch.tensor(written["train"][0][3], dtype=torch.float32) / 255)


def test_cifar100_fails_torchvisions_md5_check_with_a_clear_error(tmp_path):
    write_cifar100(tmp_path / "cifar-100-python", 5, 4)
    with pytest.raises(RuntimeError, match="corrupted"):  # torchvision checks the real download's MD5
        datasets.CIFAR100(tmp_path, train=True, download=False)
    cfg = _task("cifar100", tmp_path)
    check_available(cfg)  # the files are all there
    with pytest.raises(ConfigError) as err:
        build_task(cfg)
    msg = str(err.value)
    assert f"task=cifar100: the files in {tmp_path.resolve() / 'cifar-100-python'} are there but torchvision " \
           "refused them" in msg and "MD5" in msg and "cifar-100-python.tar.gz" in msg


def test_cifar100_has_100_classes_and_normalised_colour_images(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-100-python"
    written = write_cifar100(folder, 6, 5)
    tiny = with_checksums_of(datasets.CIFAR100, folder)
    raw = tiny(tmp_path, train=True, download=False)  # torchvision's reader and MD5 check, the tiny files' MD5s
    assert len(raw.classes) == 100 and raw.targets == written["train"][1]
    monkeypatch.setitem(SPECS, "cifar100", replace(SPECS["cifar100"], dataset=tiny))

    train, test = build_task(_task("cifar100", tmp_path, augment=True))
    images, labels = written["test"]
    for i in range(5):
        x, y = test[i]
        assert x.shape == (3, 32, 32) and y == labels[i]
        torch.testing.assert_close(x, _normalised(images[i], *CIFAR100_STATS))
    assert test[0][1] == 99  # the top class index comes through (100 output units)
    # augment=true changes the training images (random crop/flip), never the test ones
    torch.manual_seed(0)
    plain = _normalised(written["train"][0][2], *CIFAR100_STATS)
    assert any(not torch.equal(train[2][0], plain) for _ in range(5))


def test_svhn_reads_the_mat_files_maps_10_to_0_and_keeps_rows_and_columns(tmp_path, monkeypatch):
    folder = tmp_path / "SVHN"
    written = write_svhn(folder, 6, 5)
    with pytest.raises(RuntimeError, match="corrupted"):
        datasets.SVHN(folder, split="train", download=False)
    tiny = with_checksums_of(datasets.SVHN, folder)
    monkeypatch.setitem(SPECS, "svhn", replace(SPECS["svhn"], dataset=tiny))

    train, test = build_task(_task("svhn", tmp_path))
    x_mat, y_mat = written["test"]
    for i in range(5):
        x, y = test[i]
        assert x.shape == (3, 32, 32) and 0 <= y <= 9 and y == int(y_mat[i]) % 10
        # X[row, column, channel, image] -> x[channel, row, column]
        torch.testing.assert_close(x, _normalised(x_mat[:, :, :, i].transpose(2, 0, 1), *SVHN_STATS))
    assert test[0][1] == 0 and len(train) == 6  # the file's label 10 is the digit 0


def test_augmentation_per_task():
    from torchvision import transforms

    def kinds(name, augment):
        train_tf, test_tf = transforms_for(SPECS[name], augment, SHAPE[name][1])
        assert not any(isinstance(t, (transforms.RandomCrop, transforms.RandomHorizontalFlip))
                       for t in test_tf.transforms)
        return [type(t).__name__ for t in train_tf.transforms]

    assert kinds("svhn", True) == ["RandomCrop", "ToTensor", "Normalize"]  # digits: never flipped
    assert kinds("cifar100", True) == ["RandomHorizontalFlip", "RandomCrop", "ToTensor", "Normalize"]
    assert kinds("fashion_mnist", True) == ["RandomHorizontalFlip", "RandomCrop", "ToTensor"]  # pixels in [0, 1]
    assert kinds("cifar100", False) == ["ToTensor", "Normalize"]
    crop = transforms_for(SPECS["fashion_mnist"], True, 28)[0].transforms[1]
    assert crop.size == (28, 28) and crop.padding == 2


@pytest.mark.parametrize("name,folder,files", [
    ("fashion_mnist", "FashionMNIST/raw", "train-images-idx3-ubyte"),
    ("cifar100", "cifar-100-python", "train, test, meta"),
    ("svhn", "SVHN", "train_32x32.mat, test_32x32.mat"),
])
def test_missing_data_fails_early_saying_where_and_how(tmp_path, name, folder, files):
    with pytest.raises(ConfigError) as err:
        check_available(_task(name, tmp_path))
    msg = str(err.value)
    assert f"task={name}: the data set is not in {tmp_path.resolve() / folder} (missing {files}" in msg
    assert "task.download=false" in msg and "task=mnist5k" in msg
    t0 = time.monotonic()  # download=true and no network: refused after a short probe, not a hang
    with pytest.raises(ConfigError, match="cannot be downloaded from here"):
        check_available(replace(_task(name, tmp_path), download=True))
    assert time.monotonic() - t0 < 15


def test_the_number_of_classes_flows_from_the_task_to_the_output_layer():
    for preset, classes in (("fashion_mnist", 10), ("cifar100", 100), ("svhn", 10)):
        cfg = from_dict(compose_cfg([f"+experiment=tasks/{preset}_cnn"]))
        assert (cfg.task.name, cfg.task.num_classes, cfg.model.fc[-1]) == (preset, classes, classes)
        mlp = from_dict(compose_cfg([f"task={preset}", "model=mlp"]))
        assert mlp.model.archi[-1] == classes and mlp.model.archi[0] == mlp.task.input_dim
    with pytest.raises(ConfigError, match="output layer has 10 units but task=cifar100 has 100 classes"):
        from_dict(compose_cfg(["+experiment=tasks/cifar100_cnn", "model.fc=[10]"]))


@pytest.mark.slow
def test_launch_trains_the_fashion_mnist_preset_from_tiny_files(tmp_path):
    write_idx(tmp_path / "data" / "FashionMNIST" / "raw", 64, 40)
    run = tmp_path / "run"
    launch_cli(["+experiment=tasks/fashion_mnist_cnn", f"task.data_dir={tmp_path / 'data'}", "task.download=false",
                *TINY], run_dir=run, timeout=300, check=True)
    m = read_metrics(run)
    assert len(m) == 1 and m[0]["status"] == "ok" and 0.0 <= m[0]["test_acc"] <= 1.0
