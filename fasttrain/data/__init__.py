"""Datasets: readers of raw sources, the converter, the on-disk formats and their checks.

    registry      the readers, by name (each reader module registers itself on import)
    cifar, tinyimagenet, cars196, imagefolder, imagenet   the readers; sources, archive, decode: what they
                  read with (imagenet lists files only: it is written as a jpeg store)
    convert       the one entry point: reader -> writer (tensor_format, formats, jpeg_store), under outdir's rules
    verify        check_dataset / dataset_identity / is_complete: a directory against its meta.json
    splits        every seeded index draw (subsets, val carving, hold-outs, epoch order)

Importing the package registers every reader, so `registry.READERS` is complete for the converter.
"""

from . import cars196, cifar, imagefolder, imagenet, tinyimagenet  # noqa: F401 - registers the readers
