"""Deployment: a revdet Mask R-CNN traces with Detectron2's TracingAdapter (as Detectron2's
own export tests do), and the traced module gives the eager model's detections at an
input size other than the one it was traced at."""

import io

import pytest
import torch

from detectron2.export import TracingAdapter
from detectron2.modeling import build_model
from detectron2.utils.testing import assert_instances_allclose
from revdet_tiny import tiny_cfg


def _image(height, width, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(3, height, width, generator=g) * 255).round()


@pytest.mark.parametrize("backbone", ["build_rev_mvit_fpn_backbone",
                                      "build_rev_vit_simple_fpn_backbone"])
def test_traced_mask_rcnn_matches_eager_at_another_size(backbone):
    torch.manual_seed(0)
    # every proposal kept, so the comparison covers many boxes and masks
    model = build_model(tiny_cfg(backbone, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0)).eval()

    def inference(model, image):
        return model.inference([{"image": image}], do_postprocess=False)[0]

    adapter = TracingAdapter(model, _image(64, 64, 0), inference)
    with torch.no_grad():
        traced = torch.jit.trace(adapter, (_image(64, 64, 0),))
    buffer = io.BytesIO()  # what a deployment does: save, then load without Python code
    torch.jit.save(traced, buffer)
    buffer.seek(0)
    traced = torch.jit.load(buffer)

    for size in ((96, 80), (64, 64)):
        image = _image(*size, 1)
        with torch.no_grad():
            eager = inference(model, image)
            exported = adapter.outputs_schema(traced(image))
        assert len(eager) > 0 and eager.has("pred_masks")
        assert_instances_allclose(eager, exported, size_as_tensor=True, rtol=1e-4)
