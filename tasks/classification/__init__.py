"""Image classification and few-shot classification on registry backbones."""
