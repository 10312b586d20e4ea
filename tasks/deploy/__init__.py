"""Deploy a fine-tuned checkpoint: export, int8 quantisation, channel pruning, measurements.

- ``source.py``     a checkpoint restored for deployment, and where its data lies
- ``adapters.py``   per task: real inputs, what is exported, its outputs, its preprocessing
- ``formats.py``    onnx / torchscript / exported-program: write a file, load it back as a module
- ``sidecar.py``    the JSON written beside every exported file (preprocessing, classes, parity)
- ``export.py``     ``resnet-tasks export``: export, parity check on validation images, atomic write
- ``predict.py``    ``resnet-tasks predict --model FILE``: the task's own predict on an exported file
- ``quantize.py``   ``resnet-tasks quantize``: int8 through PT2E (torchao's X86 inductor quantizer)
- ``prune.py``      ``resnet-tasks prune``: channel pruning with torch-pruning, fine-tuning through ``fit``
- ``measure.py``    latency, size on disk, parameters, FLOPs
"""
