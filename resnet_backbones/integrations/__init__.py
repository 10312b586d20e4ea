"""Adapters that plug registry backbones into other libraries (smp, torchvision detection)."""
