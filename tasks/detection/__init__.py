"""Faster R-CNN detection on the registry backbones, with an FPN or a ResNet-C4 box head.

Where things are:

- ``config.py``     the ``--task detection`` flags (``DetectionConfig``) and the demo defaults
- ``task.py``       ``DetectionTask``: wires data, model, metrics and outputs to the engine
- ``model.py``      ``Detector`` (torchvision ``FasterRCNN`` on our parts) and ``build_detector``
- ``heads/``        box-head designs: ``fpn.py``, ``c4.py`` (stage 5 as box head), ``predictor.py``
- ``coco.py``       COCO JSON loading and checks, few-shot subsets, the Dataset
- ``transforms.py`` box-aware albumentations
- ``metrics.py``    COCO mAP / AP50 / AP75 / AP S/M/L with pycocotools
- ``convert.py``    instance-mask PNGs → COCO JSON (``resnet-tasks convert masks-to-coco``)
- ``demo.py``       the generated demo set, written as COCO
- ``visualize.py``  boxes drawn on images
"""
