"""Detection on the registry backbones: Faster R-CNN (FPN or ResNet-C4 box head), Mask R-CNN,
RetinaNet and FCOS, all torchvision's implementations.

Where things are:

- ``config.py``     the ``--task detection`` flags (``DetectionConfig``) and the demo defaults
- ``task.py``       ``DetectionTask``: wires data, model, metrics and outputs to the engine
- ``model.py``      ``Detector`` (torchvision ``FasterRCNN`` on our parts) and ``build_detector``
- ``heads/``        head designs: ``fpn.py``, ``c4.py`` (stage 5 as box head), ``maskrcnn.py``,
                    ``dense.py`` (RetinaNet/FCOS), ``predictor.py``
- ``pretrained.py`` torchvision detectors' weights (or files of them) loaded into ours
- ``coco.py``       COCO JSON loading and checks, few-shot subsets, the Dataset
- ``transforms.py`` box-aware albumentations
- ``metrics.py``    COCO box and mask mAP / AP50 / AP75 / AP S/M/L with pycocotools
- ``convert.py``    instance-mask PNGs → COCO JSON (``resnet-tasks convert masks-to-coco``)
- ``formats.py``    Pascal VOC XML and YOLO txt → COCO JSON (``convert voc-to-coco | yolo-to-coco``)
- ``demo.py``       the generated demo set, written as COCO
- ``visualize.py``  boxes drawn on images
"""
