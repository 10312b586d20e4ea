"""Semantic segmentation: a U-Net (or FPN / DeepLabV3+) decoder on a registry ResNet.

``resnet-tasks finetune --task segmentation --freeze-stages 3`` trains on the embedded demo set;
``--data DATA`` on your own, laid out as ``DATA/{train,val}/{images,masks}/`` with masks matched
to images by file stem (``image/`` + ``label/`` work too; no ``val/`` means a seeded split).
Masks are PNGs of class indices; 0/255 masks are read as binary. Details: :mod:`.data`.

Files: ``config.py`` (flags), ``data.py`` (layout, checks, augmentation), ``demo.py`` (the demo
set), ``model.py`` (encoder → decoder → head), ``metrics.py``, ``visuals.py``, ``task.py`` (wiring).
"""
