"""What fnn knows of each dataset: counts, image shape, classes, the original files and their digests."""

import dataclasses

from fnn._errors import DatasetError

#: (images, labels) base names of the original files, per split.
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SPLITS = tuple(FILES)

_MNIST_SHA256 = {  # decompressed; shared/datasets/mnist/SHA256SUMS.raw
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}


@dataclasses.dataclass(frozen=True, eq=False)
class Spec:
    """What fnn expects of one dataset: counts, image shape, classes, digests."""

    name: str
    num_train: int = 60_000
    num_test: int = 10_000
    image_shape: tuple = (28, 28)
    num_classes: int = 10
    sha256: dict = dataclasses.field(default_factory=dict)  # base name -> hex digest

    def num_examples(self, split):
        """Number of examples in ``split`` ("train" or "test")."""
        return self.num_train if split == "train" else self.num_test


SPECS = {
    "mnist": Spec("mnist", sha256=_MNIST_SHA256),
    "fashion_mnist": Spec("fashion_mnist"),
    "kmnist": Spec("kmnist"),
}


def spec(name):
    """Returns the spec of ``name`` or raises a DatasetError listing the known names."""
    try:
        return SPECS[name]
    except (KeyError, TypeError):
        raise DatasetError(f"unknown dataset {name!r}; fnn.data supports: {', '.join(sorted(SPECS))}") from None
