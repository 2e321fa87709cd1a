"""The offline tasks' splits: the stated sizes, every class on both sides, and no image in both."""
import pytest
from eqprop.tasks import offline


def _rows(ds):
    x = ds.tensors[0]
    return {bytes(r.numpy().tobytes()) for r in x.reshape(len(x), -1)}


@pytest.mark.parametrize("task,n_train,n_test", [("mnist5k", 4000, 1000), ("digits", 1437, 360)])
def test_split_sizes_and_classes(task, n_train, n_test):
    train, test = getattr(offline, task)()
    assert (len(train), len(test)) == (n_train, n_test)
    for ds in (train, test):
        assert set(ds.tensors[1].tolist()) == set(range(10))
        assert ds.tensors[0].min() >= 0 and ds.tensors[0].max() <= 1


@pytest.mark.parametrize("task", ["mnist5k", "digits"])
def test_train_and_test_share_no_image(task):
    train, test = getattr(offline, task)()
    a, b = _rows(train), _rows(test)
    assert (len(a), len(b)) == (len(train), len(test))  # no image twice within a set ...
    assert not a & b                                     # ... and none in both
