"""GPU decoders of the streaming JPEG pipeline: a batch of JPEG bytes, one crop box and flip per image, in
and the fixed-size (B, res, res, 3) uint8 batch on the GPU out (NHWC, i.e. channels_last).

  NvjpegCropDecoder  torchvision.io.decode_jpeg(list, device="cuda") (nvJPEG, batched) decodes every image
                     at full size, then one launch of the crop-resize kernel (torch.ops.fasttrain.crop_resize,
                     cuda_ext/csrc/crop_resize.h) crops, resizes (antialiased bilinear) and flips all of them.
                     The crop arithmetic is the CPU decoder's, bit for bit: batches differ between the two only
                     by the JPEG decoders' own rounding (libjpeg-turbo's and nvJPEG's IDCT and upsampling).
  DaliCropDecoder    NVIDIA DALI: decoders.image_slice decodes only the box (nvJPEG ROI decode and the
                     hardware JPEG engine of A100/H100 with device="mixed"), then resize (linear, antialiased)
                     and flip. DALI's random-crop decoder (image_random_crop) draws its own boxes from DALI's
                     generator, so it cannot take ours; image_slice takes the same boxes explicitly, so a run's
                     crops do not depend on the back-end. Its resampling is DALI's own: within a few levels
                     of the others, not bit-identical. device="cpu" runs the same graph on the CPU (tests).

Both take boxes as (y0, x0, h, w) in the STORED image's pixels (rrc_params / centre_crop_box of
fasttrain/data/crops.py) and are called once per batch from the pipeline's prefetch thread. Neither has
run on a GPU in this repository's CI: the GPU test and `make gpu-check` verify them where one is lent.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch


def _as_boxes_flips(boxes, flips, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    b = torch.as_tensor(np.asarray(boxes, dtype=np.float32)).reshape(-1, 4)
    f = torch.as_tensor(np.asarray(flips, dtype=bool)).reshape(-1)
    if len(b) != n or len(f) != n:
        raise ValueError(f"{n} images need {n} boxes and flips, got {len(b)} boxes and {len(f)} flips")
    return b.contiguous(), f.contiguous()


def _byte_tensors(jpegs: list[bytes]) -> list[torch.Tensor]:
    """The encoded files as 1-d uint8 CPU tensors, without copies (the decoder only reads them)."""
    with warnings.catch_warnings():  # torch warns that bytes objects are read-only; nothing writes to them
        warnings.simplefilter("ignore", UserWarning)
        return [torch.frombuffer(memoryview(j), dtype=torch.uint8) for j in jpegs]


class NvjpegCropDecoder:
    """decode_jpeg(device="cuda") on the whole batch + the crop-resize kernel. Needs the CUDA extension
    (built on first use, as for the augmentation kernel) and torchvision with nvJPEG."""

    name = "nvjpeg"

    def __init__(self, device: torch.device | str = "cuda"):
        from fasttrain.cuda_ext import load

        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise ValueError(f"the nvjpeg decoder needs a CUDA device, got {self.device}")
        load()  # raises ExtensionUnavailable with the reason and the fix

    def __call__(self, jpegs: list[bytes], boxes, flips, res: int) -> torch.Tensor:
        from torchvision.io import ImageReadMode, decode_jpeg

        boxes_t, flips_t = _as_boxes_flips(boxes, flips, len(jpegs))
        with torch.cuda.device(self.device):
            images = decode_jpeg(_byte_tensors(jpegs), mode=ImageReadMode.RGB, device=self.device)
            return torch.ops.fasttrain.crop_resize(images, boxes_t, flips_t, int(res))


class DaliCropDecoder:
    """DALI image_slice (ROI decode) + resize + flip, fed one batch per call through external sources.
    The DALI pipeline is built once per (batch size, resolution) and reused."""

    name = "dali"

    def __init__(self, device: torch.device | str = "cuda", num_threads: int = 4, max_batch: int = 256):
        from fasttrain.data.formats import import_optional

        import_optional("nvidia.dali", "dali")
        self.device = torch.device(device)
        self.num_threads, self.max_batch = num_threads, max_batch
        self._pipes: dict[tuple[int, int], object] = {}

    def _pipe(self, batch: int, res: int):
        key = (batch, res)
        if key not in self._pipes:
            from nvidia.dali import fn, pipeline_def, types

            gpu = self.device.type == "cuda"
            device_id = (self.device.index if self.device.index is not None else torch.cuda.current_device()) \
                if gpu else None

            @pipeline_def(batch_size=batch, num_threads=self.num_threads, device_id=device_id,
                          prefetch_queue_depth=1, exec_pipelined=False, exec_async=False)
            def crop_pipeline():
                jpegs = fn.external_source(name="jpegs", dtype=types.UINT8)
                anchor = fn.external_source(name="anchor", dtype=types.INT32)
                shape = fn.external_source(name="shape", dtype=types.INT32)
                flip = fn.external_source(name="flip", dtype=types.INT32)
                images = fn.decoders.image_slice(jpegs, anchor, shape, device="mixed" if gpu else "cpu",
                                                 axis_names="HW", output_type=types.RGB, adjust_orientation=False,
                                                 jpeg_fancy_upsampling=True)
                images = fn.resize(images, resize_x=res, resize_y=res, interp_type=types.INTERP_LINEAR,
                                   antialias=True)
                return fn.flip(images, horizontal=flip)

            pipe = crop_pipeline()
            pipe.build()
            self._pipes[key] = pipe
        return self._pipes[key]

    def __call__(self, jpegs: list[bytes], boxes, flips, res: int) -> torch.Tensor:
        from nvidia.dali.plugin.pytorch import feed_ndarray

        n = len(jpegs)
        boxes_t, flips_t = _as_boxes_flips(boxes, flips, n)
        ints = boxes_t.round().to(torch.int32).numpy()  # DALI slices whole pixels
        pipe = self._pipe(n, int(res))
        pipe.feed_input("jpegs", [np.frombuffer(j, dtype=np.uint8) for j in jpegs])
        pipe.feed_input("anchor", [row[:2].copy() for row in ints])
        pipe.feed_input("shape", [row[2:].copy() for row in ints])
        pipe.feed_input("flip", [np.array(int(f), dtype=np.int32) for f in flips_t.tolist()])
        (images,) = pipe.run()
        dense = images.as_tensor()
        out = torch.empty(tuple(dense.shape()), dtype=torch.uint8, device=self.device)
        if self.device.type == "cuda":
            feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(self.device))
        else:
            feed_ndarray(dense, out)
        return out


def gpu_crop_decoder(name: str, device: torch.device | str = "cuda"):
    """The decoder called `name` ('nvjpeg' or 'dali') on `device`."""
    if name == "nvjpeg":
        return NvjpegCropDecoder(device)
    if name == "dali":
        return DaliCropDecoder(device)
    raise ValueError(f"unknown GPU decoder {name!r}: expected 'nvjpeg' or 'dali'")
