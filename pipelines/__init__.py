"""Data pipelines: each yields (uint8 NHWC images, int64 labels) batches on the training device.

Installed as `fasttrain.pipelines`. Every pipeline has `__len__` (batches per epoch), `__iter__`,
`set_epoch(epoch)` and sees every sample exactly once per epoch (the last partial batch is kept unless
`drop_last`). Augmentation happens after, on the device, in `fasttrain.augment`.
"""
